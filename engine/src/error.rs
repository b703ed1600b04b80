//! The one error type of the `coordgen` crate.
//!
//! Every failure that input can cause (a hostile GGUF file, an out-of-range
//! token id, a prompt longer than the context) ends up here as a typed variant
//! that names the problem. The library never panics on such input.

use std::path::PathBuf;

/// Errors returned by the `coordgen` engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === I/O ===
    /// A file could not be opened or mapped. The reason is in the message,
    /// not in `source()`, so a printed error chain does not repeat it.
    #[error("cannot open {path}: {reason}")]
    Open {
        path: PathBuf,
        reason: std::io::Error,
    },

    // === GGUF ===
    /// The file does not start with the four bytes `GGUF`.
    #[error("not a GGUF file: magic bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    /// A GGUF version other than 2 or 3 (v1, a future version, or a
    /// big-endian file whose version reads byte-swapped).
    #[error("unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion { version: u32 },
    /// A fixed-size field (or the tensor data section) extends past the end
    /// of the file. `item` names the metadata key or tensor being read.
    #[error("GGUF file truncated: {what} of {item} at offset {offset} needs {needed} bytes, but the file is {file_len} bytes")]
    TruncatedFile {
        item: String,
        what: &'static str,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    /// A length or count read from the file (string length, array length,
    /// tensor or metadata count) cannot fit in the bytes that remain.
    #[error("GGUF {what} of {item} at offset {offset} is {length}, more than the {remaining} bytes left in the file")]
    LengthPastEnd {
        item: String,
        what: &'static str,
        offset: u64,
        length: u64,
        remaining: u64,
    },
    /// A string (metadata key, string value or tensor name) is not UTF-8.
    #[error("GGUF string of {item} at offset {offset} is not valid UTF-8")]
    NonUtf8String { item: String, offset: u64 },
    /// A metadata value (or array element) type id outside 0..=12.
    #[error("GGUF metadata key {key:?}: unknown value type id {type_id} at offset {offset}")]
    UnknownMetaType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    /// A boolean metadata value that is neither 0 nor 1.
    #[error(
        "GGUF metadata key {key:?}: boolean byte {byte} at offset {offset} is neither 0 nor 1"
    )]
    InvalidBool { key: String, offset: u64, byte: u8 },
    /// Arrays nested deeper than the reader allows (bounds the recursion).
    #[error("GGUF metadata key {key:?}: arrays nested deeper than {max_depth}")]
    NestingTooDeep { key: String, max_depth: usize },
    /// The same metadata key appears twice.
    #[error("GGUF metadata key {key:?} appears more than once")]
    DuplicateKey { key: String },
    /// The same tensor name appears twice.
    #[error("GGUF tensor {name:?} appears more than once")]
    DuplicateTensor { name: String },
    /// `general.alignment` is zero, not a power of two, or above `u32::MAX`.
    #[error("GGUF general.alignment = {value} is not a nonzero power of two that fits in u32")]
    BadAlignment { value: u64 },
    /// A tensor with more than 4 dimensions.
    #[error("GGUF tensor {name:?} has {n_dims} dimensions (at most 4 are allowed)")]
    TooManyDims { name: String, n_dims: u32 },
    /// A tensor whose element count or byte size overflows `u64`.
    #[error("GGUF tensor {name:?}: size of dims {dims:?} overflows")]
    TensorSizeOverflow { name: String, dims: Vec<u64> },
    /// A quantized tensor whose first dimension is not a whole number of blocks.
    #[error("GGUF tensor {name:?}: first dimension {ne0} is not a multiple of the {ty} block length {block_len}")]
    RowNotBlockAligned {
        name: String,
        ty: &'static str,
        ne0: u64,
        block_len: u64,
    },
    /// A known ggml tensor type this engine does not implement (Q5_0, K-quants, ...).
    #[error("GGUF tensor {name:?}: ggml type {type_id} ({}) is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0)", crate::gguf::ggml_type_name(*type_id).unwrap_or("?"))]
    UnsupportedTensorType { name: String, type_id: u32 },
    /// A ggml tensor type id that no known ggml version defines.
    #[error("GGUF tensor {name:?}: unknown ggml type id {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    /// Tensor data that does not lie inside the data section.
    #[error("GGUF tensor {name:?}: data [{offset}, +{n_bytes}) lies outside the {data_len}-byte data section")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        n_bytes: u64,
        data_len: u64,
    },
    /// A tensor data offset that is not a multiple of the file's alignment.
    #[error(
        "GGUF tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    MisalignedTensor {
        name: String,
        offset: u64,
        alignment: u64,
    },
    /// A required metadata key is absent.
    #[error("GGUF metadata key {key:?} is missing")]
    MissingKey { key: String },
    /// A metadata value has a different type than the caller needs.
    #[error("GGUF metadata key {key:?}: expected {expected}, found {found}")]
    WrongMetaType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A numeric metadata value does not fit the type the caller needs.
    #[error("GGUF metadata key {key:?}: value {value} does not fit in {expected}")]
    MetaOutOfRange {
        key: String,
        expected: &'static str,
        value: String,
    },
    /// `GgufWriter::add_tensor` got a byte buffer of the wrong size.
    #[error("GGUF writer: tensor {name:?} needs {expected} bytes of data, got {actual}")]
    TensorDataSize {
        name: String,
        expected: u64,
        actual: u64,
    },
    /// `GgufWriter::write_to` failed to write the file.
    #[error("cannot write GGUF file {path}: {reason}")]
    GgufWrite {
        path: PathBuf,
        reason: std::io::Error,
    },

    // === Tokenizer and chat template ===
    /// A token id at or past the end of the vocabulary (decode, token_text, forward passes).
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// `tokenizer.ggml.model` other than `gpt2` (byte-level BPE).
    #[error("tokenizer model {model:?} is not supported (supported: \"gpt2\", byte-level BPE)")]
    UnsupportedTokenizerModel { model: String },
    /// A `tokenizer.ggml.pre` type this engine has no pre-tokenizer for.
    #[error("pre-tokenizer {pre:?} is not supported (supported: smollm, llama3/llama-bpe, qwen2, gpt-2, default)")]
    UnsupportedPreTokenizer { pre: String },
    /// Tokenizer data that cannot form a vocabulary (duplicate or missing
    /// tokens, mismatched arrays, a special id outside the vocabulary).
    #[error("invalid tokenizer vocabulary: {reason}")]
    InvalidVocab { reason: String },
    /// The model asks for BOS/EOS to be added but names no such token.
    #[error("the tokenizer must add a {which} token but the model defines none")]
    MissingSpecialToken { which: &'static str },
    /// The pre-tokenizer regex gave up on the input (backtrack limit).
    #[error("pre-tokenizer failed: {reason}")]
    PreTokenizer { reason: String },
    /// The chat template does not parse.
    #[error("chat template does not compile: {message}")]
    TemplateSyntax { message: String },
    /// Rendering the chat template failed.
    #[error("chat template rendering failed: {message}")]
    TemplateRender { message: String },
    /// The chat template called `raise_exception(message)`, which templates
    /// use to reject conversations they cannot format.
    #[error("chat template raised an exception: {message}")]
    TemplateException { message: String },

    // === Model, graph and backend ===
    #[error("graph compiler: {0}")]
    Graph(coordgen_graph::Error),
    #[error("CPU backend: {0}")]
    Cpu(coordgen_cpu::Error),
    /// The QNN backend could not start (a missing or broken library names
    /// its folder and how to fill it) or failed a call.
    #[error("QNN backend: {0}")]
    Qnn(coordgen_qnn::Error),
    /// The Vulkan backend could not start (no loader, no device, no
    /// validation layer when asked for) or failed a call.
    #[error("Vulkan backend: {0}")]
    Vulkan(coordgen_vulkan::Error),
    /// The model file describes an architecture the graph compiler cannot lower.
    #[error("unsupported model architecture {arch:?} (supported: llama)")]
    UnsupportedArchitecture { arch: String },
    /// Hyper-parameters in the model file contradict each other or the tensors.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    // === Sessions and generation ===
    /// The prompt (plus what the session already holds) does not fit the context.
    #[error("{needed} tokens do not fit in the context of {context} tokens")]
    ContextOverflow { needed: usize, context: usize },
    /// An empty prompt: there is nothing to continue from.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A sampler setting outside its meaningful range.
    #[error("sampler setting {name} = {value} is out of range")]
    InvalidSampler { name: &'static str, value: f32 },
    /// Verify-pass logits that are not one row of `vocab` values per row of
    /// the draft tree (the root plus every node).
    #[error("tree logits hold {actual} values, expected {rows} rows of {vocab}")]
    TreeLogitsShape {
        rows: usize,
        vocab: usize,
        actual: usize,
    },
    /// An option of the engine outside its range.
    #[error("invalid option {name}: {message}")]
    InvalidOption { name: &'static str, message: String },
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// By hand, not `#[from]`: the message already holds the wrapped error, and
// a `source()` would print it twice in an error chain.
impl From<coordgen_qnn::Error> for Error {
    fn from(e: coordgen_qnn::Error) -> Self {
        Error::Qnn(e)
    }
}

impl From<coordgen_vulkan::Error> for Error {
    fn from(e: coordgen_vulkan::Error) -> Self {
        Error::Vulkan(e)
    }
}

impl From<coordgen_graph::Error> for Error {
    fn from(e: coordgen_graph::Error) -> Self {
        Error::Graph(e)
    }
}

impl From<coordgen_cpu::Error> for Error {
    fn from(e: coordgen_cpu::Error) -> Self {
        Error::Cpu(e)
    }
}
