//! Small models with deterministic random weights, held in memory, for
//! cross-backend tests on IR graphs.

use coordgen_graph::{
    lower, names, DType, ModelConfig, Plan, PlanOptions, WeightBytes, WeightCatalog, WeightDesc,
    WeightSource,
};
use coordgen_kernels::{kquant, quant, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ8_0};
use half::f16;
use std::collections::HashMap;
use std::sync::Arc;

/// Weights held in memory, by name.
#[derive(Clone, Default)]
pub struct MemWeights(pub HashMap<String, (WeightDesc, Arc<Vec<u8>>)>);

impl WeightCatalog for MemWeights {
    fn describe(&self, name: &str) -> Option<WeightDesc> {
        self.0.get(name).map(|(d, _)| d.clone())
    }
}

impl WeightSource for MemWeights {
    fn bytes(&self, name: &str) -> Option<WeightBytes> {
        let (_, bytes) = self.0.get(name)?;
        let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = bytes.clone();
        WeightBytes::new(owner, 0..bytes.len())
    }
}

/// Deterministic values (a linear congruential generator).
pub struct Rng(pub u64);

impl Rng {
    /// A value in [-scale, scale).
    pub fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next(scale)).collect()
    }
}

/// `values` in a GGUF type's bytes.
pub fn encode(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => bytemuck::cast_slice(values).to_vec(),
        DType::F16 => {
            let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::Q8_0 => {
            let mut q = vec![BlockQ8_0::default(); values.len() / quant::QK];
            quant::quantize_row_q8_0(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        DType::Q4_0 => {
            let mut q = vec![BlockQ4_0::default(); values.len() / quant::QK];
            quant::quantize_row_q4_0(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        DType::Q4_1 => {
            let mut q = vec![BlockQ4_1::default(); values.len() / quant::QK];
            quant::quantize_row_q4_1(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        DType::Q4_K => {
            let mut q = vec![BlockQ4K::default(); values.len() / kquant::QK_K];
            kquant::quantize_row_q4_k(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        DType::Q5_K => {
            let mut q = vec![kquant::BlockQ5K::default(); values.len() / kquant::QK_K];
            kquant::quantize_row_q5_k(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        DType::Q6_K => {
            let mut q = vec![kquant::BlockQ6K::default(); values.len() / kquant::QK_K];
            kquant::quantize_row_q6_k(values, &mut q);
            bytemuck::cast_slice(&q).to_vec()
        }
        other => panic!("no test encoding for {other}"),
    }
}

impl MemWeights {
    /// Adds a weight: norm vectors near 1, matrices small, like a trained
    /// model's.
    pub fn add(&mut self, rng: &mut Rng, name: String, dtype: DType, shape: Vec<usize>) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match shape.len() {
            1 => rng.vec(n, 0.2).iter().map(|v| 1.0 + v).collect(),
            _ => rng.vec(n, 0.15),
        };
        self.0.insert(
            name,
            (
                WeightDesc { dtype, shape },
                Arc::new(encode(&values, dtype)),
            ),
        );
    }
}

impl MemWeights {
    /// Only the weights named.
    pub fn subset(&self, names: &std::collections::HashSet<String>) -> MemWeights {
        MemWeights(
            self.0
                .iter()
                .filter(|(n, _)| names.contains(*n))
                .map(|(n, w)| (n.clone(), w.clone()))
                .collect(),
        )
    }
}

/// The tiny llama of the cross-backend tests: 2 layers, d = 64, GQA,
/// matrices in `matrix_dtype`.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        n_layers: 2,
        d_model: 64,
        d_ff: 128,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        vocab_size: 96,
        train_context: 256,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
    }
}

/// Weights of [`tiny_config`], matrices in `matrix_dtype`.
pub fn tiny_weights(matrix_dtype: DType, seed: u64) -> MemWeights {
    let c = tiny_config();
    let mut rng = Rng(seed);
    let mut w = MemWeights::default();
    w.add(
        &mut rng,
        names::TOKEN_EMBD.into(),
        DType::Q8_0,
        vec![96, 64],
    );
    w.add(&mut rng, names::OUTPUT_NORM.into(), DType::F32, vec![64]);
    for l in 0..c.n_layers {
        for (what, shape) in [
            ("attn_norm", vec![64]),
            ("ffn_norm", vec![64]),
            ("attn_q", vec![64, 64]),
            ("attn_k", vec![32, 64]),
            ("attn_v", vec![32, 64]),
            ("attn_output", vec![64, 64]),
            ("ffn_gate", vec![128, 64]),
            ("ffn_up", vec![128, 64]),
            ("ffn_down", vec![64, 128]),
        ] {
            let dtype = if shape.len() == 1 {
                DType::F32
            } else {
                matrix_dtype
            };
            w.add(&mut rng, names::layer(l, what), dtype, shape);
        }
    }
    w
}

/// A small llama whose widths are whole K-quant super-blocks (256):
/// 1 layer, d = 256, FFN 512, 4 heads of 64, 2 KV heads.
pub fn wide_config() -> ModelConfig {
    ModelConfig {
        n_layers: 1,
        d_model: 256,
        d_ff: 512,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
        vocab_size: 96,
        train_context: 256,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
    }
}

/// Weights of [`wide_config`], matrices and the embedding table in `dtype`.
pub fn wide_weights(dtype: DType, seed: u64) -> MemWeights {
    let c = wide_config();
    let mut rng = Rng(seed);
    let mut w = MemWeights::default();
    w.add(&mut rng, names::TOKEN_EMBD.into(), dtype, vec![96, 256]);
    w.add(&mut rng, names::OUTPUT_NORM.into(), DType::F32, vec![256]);
    for l in 0..c.n_layers {
        for (what, shape) in [
            ("attn_norm", vec![256]),
            ("ffn_norm", vec![256]),
            ("attn_q", vec![256, 256]),
            ("attn_k", vec![128, 256]),
            ("attn_v", vec![128, 256]),
            ("attn_output", vec![256, 256]),
            ("ffn_gate", vec![512, 256]),
            ("ffn_up", vec![512, 256]),
            ("ffn_down", vec![256, 512]),
        ] {
            let t = if shape.len() == 1 { DType::F32 } else { dtype };
            w.add(&mut rng, names::layer(l, what), t, shape);
        }
    }
    w
}

/// The plan of [`wide_config`] with the buckets of [`tiny_plan`].
pub fn wide_plan(weights: &MemWeights) -> Plan {
    let opts = PlanOptions {
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: 1,
        context_length: 64,
    };
    lower(&wide_config(), weights, &opts).expect("the wide model lowers")
}

/// The plan of [`tiny_config`] with small buckets.
pub fn tiny_plan(weights: &MemWeights) -> Plan {
    let opts = PlanOptions {
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        layers_per_block: 2,
        context_length: 64,
    };
    lower(&tiny_config(), weights, &opts).expect("the tiny model lowers")
}

/// Writes [`tiny_config`] with `weights` as a llama GGUF file, with a
/// placeholder byte-level BPE vocabulary (tests feed token ids directly).
pub fn write_tiny_gguf(weights: &MemWeights, path: &std::path::Path) {
    use coordgen::gguf::{GgufWriter, MetaArray, MetaValue, TensorType};
    let c = tiny_config();
    let mut w = GgufWriter::new();
    let u32_meta = |v: usize| MetaValue::U32(v as u32);
    w.add_metadata("general.architecture", MetaValue::String("llama".into()));
    w.add_metadata("llama.block_count", u32_meta(c.n_layers));
    w.add_metadata("llama.embedding_length", u32_meta(c.d_model));
    w.add_metadata("llama.feed_forward_length", u32_meta(c.d_ff));
    w.add_metadata("llama.attention.head_count", u32_meta(c.n_heads));
    w.add_metadata("llama.attention.head_count_kv", u32_meta(c.n_kv_heads));
    w.add_metadata("llama.context_length", u32_meta(c.train_context));
    w.add_metadata("llama.rope.freq_base", MetaValue::F32(c.rope_theta));
    w.add_metadata(
        "llama.attention.layer_norm_rms_epsilon",
        MetaValue::F32(c.rms_eps),
    );
    w.add_metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", MetaValue::String("default".into()));
    let tokens: Vec<String> = (0..c.vocab_size).map(|i| format!("<t{i}>")).collect();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    w.add_metadata(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(Vec::new())),
    );
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    let mut names: Vec<&String> = weights.0.keys().collect();
    names.sort();
    for name in names {
        let (desc, bytes) = &weights.0[name];
        let ty = match desc.dtype {
            DType::F32 => TensorType::F32,
            DType::F16 => TensorType::F16,
            DType::Q8_0 => TensorType::Q8_0,
            DType::Q4_0 => TensorType::Q4_0,
            DType::Q4_1 => TensorType::Q4_1,
            DType::Q4_K => TensorType::Q4_K,
            other => panic!("no GGUF type for {other}"),
        };
        // GGUF lists dimensions innermost first.
        let dims: Vec<u64> = desc.shape.iter().rev().map(|&d| d as u64).collect();
        w.add_tensor(name.as_str(), &dims, ty, bytes.as_slice().to_vec())
            .expect("a valid tensor");
    }
    w.write_to(path).expect("the GGUF file is written");
}
