//! Embedding coordgen: load a model, answer over a document, stream the text.
//!
//! ```sh
//! tools/fetch-model
//! cargo run --release -p coordgen --example generate -- models/SmolLM2-135M-Instruct.Q4_1.gguf tools/demo-context.md
//! ```

use coordgen::{ChatMessage, Engine, EngineOptions, GenerateParams};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let document = match args.next() {
        Some(path) => std::fs::read_to_string(path)?,
        None => "coordgen is an on-device inference engine written in Rust.".to_string(),
    };

    // Load once; sessions share the engine.
    let engine = Engine::load(&model, EngineOptions::default())?;

    // Render the conversation with the model's own chat template.
    let messages = [ChatMessage::user(format!(
        "{document}\n\nSummarize this in two sentences."
    ))];
    let prompt = engine.tokenize_chat(&engine.render_chat(&messages)?)?;

    // Generate greedily, streaming text as it completes.
    let mut session = engine.session();
    let params = GenerateParams {
        max_tokens: 96,
        ..GenerateParams::default()
    };
    let out = session.generate(&prompt, &params, |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
        true // return false to cancel
    })?;
    println!(
        "\n\n{} prompt tokens, {:.1} tokens/s decode, stopped by {:?}",
        out.prompt_tokens,
        out.timings.decode_tokens_per_second(),
        out.stop_reason
    );

    // A follow-up turn reuses the KV cache of the first.
    let follow_up = [
        messages[0].clone(),
        ChatMessage::assistant(out.text),
        ChatMessage::user("Now in one sentence."),
    ];
    let prompt2 = engine.tokenize_chat(&engine.render_chat(&follow_up)?)?;
    let out2 = session.generate(&prompt2, &params, |piece| {
        print!("{piece}");
        true
    })?;
    println!(
        "\n\n(reused {} of {} prompt tokens)",
        out2.reused_tokens, out2.prompt_tokens
    );
    Ok(())
}
