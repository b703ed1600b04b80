//! Chat templates: turning a conversation into the prompt text a model was
//! trained on, by rendering the Jinja template stored in GGUF
//! `tokenizer.chat_template` with minijinja.
//!
//! The environment matches what Hugging Face's `apply_chat_template` (and
//! llama.cpp) give templates: `trim_blocks` and `lstrip_blocks`, the variables
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, the function
//! `raise_exception(message)`, and Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()` ...) through minijinja-contrib's pycompat
//! layer. Every failure is a typed error; nothing here panics on a template.

use minijinja::{context, Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;

use crate::gguf::GgufFile;
use crate::{Error, Result};

/// ChatML, used when a GGUF carries no template of its own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The name the template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Prefix that marks an error as coming from `raise_exception`, so that
/// rendering can report it as [`Error::TemplateException`].
const RAISED_MARKER: &str = "raise_exception: ";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the texts the
    /// template sees under those names.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| Error::TemplateSyntax {
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// The template of a GGUF model (`tokenizer.chat_template`), or ChatML
    /// when it has none; BOS/EOS texts come from the model's vocabulary.
    pub fn from_gguf(gguf: &GgufFile) -> Result<ChatTemplate> {
        let source = match gguf.get("tokenizer.chat_template") {
            None => CHATML_TEMPLATE,
            Some(_) => gguf.get_str("tokenizer.chat_template")?,
        };
        let tokens = gguf
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_string_array())
            .unwrap_or(&[]);
        let token_text = |key: &str| -> String {
            gguf.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|id| usize::try_from(id).ok())
                .and_then(|id| tokens.get(id))
                .cloned()
                .unwrap_or_default()
        };
        ChatTemplate::new(
            source,
            token_text("tokenizer.ggml.bos_token_id"),
            token_text("tokenizer.ggml.eos_token_id"),
        )
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with
    /// the header of an assistant turn for the model to complete.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::TemplateRender {
                message: describe(&e),
            })?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| classify_render_error(&e))
    }
}

/// `raise_exception(message)`: templates call it to refuse a conversation
/// (say, roles that do not alternate).
fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED_MARKER}{message}"),
    ))
}

fn classify_render_error(error: &minijinja::Error) -> Error {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(jinja) = err.downcast_ref::<minijinja::Error>() {
            if let Some(message) = jinja.detail().and_then(|d| d.strip_prefix(RAISED_MARKER)) {
                return Error::TemplateException {
                    message: message.to_owned(),
                };
            }
        }
        current = err.source();
    }
    Error::TemplateRender {
        message: describe(error),
    }
}

/// The error with its chain of causes, on one line.
fn describe(error: &minijinja::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_system_user_with_generation_prompt() {
        let template = ChatTemplate::new(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").unwrap();
        let text = template
            .render(
                &[
                    ChatMessage::system("You are terse."),
                    ChatMessage::user("Hi there"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn smollm2_adds_default_system_prompt() {
        let template = ChatTemplate::new(SMOLLM2_TEMPLATE, "", "").unwrap();
        let text = template.render(&[ChatMessage::user("Hi")], false).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn chatml_default() {
        let template = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let text = template
            .render(&[ChatMessage::user("a"), ChatMessage::assistant("b")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_tokens() {
        let source = "{{ bos_token }}{% for m in messages %}{% if m.content.strip().startswith('x') %}{{ m.content.strip().upper() }}{% endif %}{% endfor %}{{ eos_token }}";
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let text = template
            .render(
                &[ChatMessage::user("  xyz "), ChatMessage::user("abc")],
                false,
            )
            .unwrap();
        assert_eq!(text, "<s>XYZ</s>");
    }

    #[test]
    fn trim_and_lstrip_blocks_like_hugging_face() {
        let source = "{% for m in messages %}\n  {% if true %}\n{{ m.content }}\n  {% endif %}\n{% endfor %}";
        let template = ChatTemplate::new(source, "", "").unwrap();
        let text = template
            .render(&[ChatMessage::user("a"), ChatMessage::user("b")], false)
            .unwrap();
        assert_eq!(text, "a\nb\n");
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let source = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('System first!') }}{% endif %}ok";
        let template = ChatTemplate::new(source, "", "").unwrap();
        match template.render(&[ChatMessage::user("hi")], false) {
            Err(Error::TemplateException { message }) => assert_eq!(message, "System first!"),
            other => panic!("expected TemplateException, got {other:?}"),
        }
        assert_eq!(
            template.render(&[ChatMessage::system("s")], false).unwrap(),
            "ok"
        );
    }

    #[test]
    fn syntax_and_render_errors_are_typed() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(Error::TemplateSyntax { .. })
        ));
        let template = ChatTemplate::new("{{ messages[0].content + 1 }}", "", "").unwrap();
        assert!(matches!(
            template.render(&[ChatMessage::user("x")], false),
            Err(Error::TemplateRender { .. })
        ));
    }
}
