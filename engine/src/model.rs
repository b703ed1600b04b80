//! From a GGUF file to what the graph compiler needs: the model config and
//! the weights, viewed in place in the memory-mapped file.

use crate::gguf::{GgufFile, TensorType};
use crate::{Error, Result};
use coordgen_graph::{DType, ModelConfig, WeightBytes, WeightCatalog, WeightDesc, WeightSource};
use std::sync::Arc;

/// The weights of a GGUF file, by name.
#[derive(Clone)]
pub struct GgufWeights {
    file: Arc<GgufFile>,
}

impl GgufWeights {
    pub fn new(file: Arc<GgufFile>) -> Self {
        GgufWeights { file }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

/// The IR dtype of a GGUF tensor type.
pub fn dtype_of(ty: TensorType) -> DType {
    match ty {
        TensorType::F32 => DType::F32,
        TensorType::F16 => DType::F16,
        TensorType::BF16 => DType::BF16,
        TensorType::Q4_0 => DType::Q4_0,
        TensorType::Q4_1 => DType::Q4_1,
        TensorType::Q8_0 => DType::Q8_0,
        TensorType::Q4_K => DType::Q4_K,
        TensorType::Q5_K => DType::Q5_K,
        TensorType::Q6_K => DType::Q6_K,
    }
}

impl WeightCatalog for GgufWeights {
    fn describe(&self, name: &str) -> Option<WeightDesc> {
        let t = self.file.tensor(name)?;
        // GGUF lists dimensions innermost first; the IR wants outermost first.
        let shape = t
            .dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(WeightDesc {
            dtype: dtype_of(t.ty),
            shape,
        })
    }
}

impl WeightSource for GgufWeights {
    fn bytes(&self, name: &str) -> Option<WeightBytes> {
        let t = self.file.tensor(name)?;
        let start = usize::try_from(self.file.data_offset().checked_add(t.offset)?).ok()?;
        let end = start.checked_add(usize::try_from(t.n_bytes).ok()?)?;
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = self.file.clone();
        WeightBytes::new(owner, start..end)
    }
}

fn usize_key(file: &GgufFile, key: &str) -> Result<usize> {
    Ok(file.get_u32(key)? as usize)
}

fn optional<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Error::MissingKey { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the llama hyper-parameters from GGUF metadata.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file.get_str("general.architecture")?.to_string();
    if arch != "llama" {
        return Err(Error::UnsupportedArchitecture { arch });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_heads = usize_key(file, &key("attention.head_count"))?;
    let d_model = usize_key(file, &key("embedding_length"))?;
    let n_kv_heads = optional(usize_key(file, &key("attention.head_count_kv")))?.unwrap_or(n_heads);
    if n_heads == 0 {
        return Err(Error::InvalidModel("attention.head_count is 0".into()));
    }
    let head_dim =
        optional(usize_key(file, &key("attention.key_length")))?.unwrap_or(d_model / n_heads);
    if let Some(rope_dims) = optional(usize_key(file, &key("rope.dimension_count")))? {
        if rope_dims != head_dim {
            return Err(Error::InvalidModel(format!(
                "partial rotary embedding ({rope_dims} of {head_dim} dimensions) is not supported"
            )));
        }
    }
    let embd = file
        .tensor(coordgen_graph::names::TOKEN_EMBD)
        .ok_or_else(|| Error::InvalidModel("no token_embd.weight tensor".into()))?;
    let vocab_size = embd
        .dims
        .get(1)
        .and_then(|&v| usize::try_from(v).ok())
        .ok_or_else(|| Error::InvalidModel("token_embd.weight is not a matrix".into()))?;
    Ok(ModelConfig {
        n_layers: usize_key(file, &key("block_count"))?,
        d_model,
        d_ff: usize_key(file, &key("feed_forward_length"))?,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        train_context: usize_key(file, &key("context_length"))?,
        rope_theta: optional(file.get_f32(&key("rope.freq_base")))?.unwrap_or(10_000.0),
        rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
    })
}
