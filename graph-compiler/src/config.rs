//! What the graph compiler needs to know about a model.

use crate::ir::DType;
use serde::Serialize;

/// Hyper-parameters of a llama-family decoder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub train_context: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

/// Dtype and shape (outermost first: `[out_features, in_features]` for a
/// matrix) of a weight the model file provides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightDesc {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// Looks weights up by their GGUF name.
pub trait WeightCatalog {
    fn describe(&self, name: &str) -> Option<WeightDesc>;
}

/// GGUF names of the llama architecture's weights.
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    pub const OUTPUT: &str = "output.weight";

    pub fn layer(layer: usize, what: &str) -> String {
        format!("blk.{layer}.{what}.weight")
    }
}
