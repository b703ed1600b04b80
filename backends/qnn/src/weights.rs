//! Converting GGUF weights into what HTP graphs take: fp16, or signed 8-bit
//! / 4-bit values with one scale per output channel (row).

use coordgen_graph::{DType, WeightDesc};
use coordgen_kernels::{
    kquant, quant, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ6K, BlockQ8_0,
};
use half::f16;

use crate::{DataType, Error, Result};

/// The format matmul weights take on the HTP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// fp16 weights and activations: the most accurate.
    #[default]
    F16,
    /// Signed 8-bit weights, one scale per output channel.
    Int8,
    /// Signed 4-bit weights (in an 8-bit container), one scale per output
    /// channel: a quarter of fp16's size, for device speed.
    Int4,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 3] = [WeightFormat::F16, WeightFormat::Int8, WeightFormat::Int4];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F16 => "f16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        }
    }

    pub fn parse(name: &str) -> Option<WeightFormat> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Largest magnitude of the signed integer format.
    fn max_level(self) -> Option<f32> {
        match self {
            WeightFormat::F16 => None,
            WeightFormat::Int8 => Some(127.0),
            WeightFormat::Int4 => Some(7.0),
        }
    }
}

/// How far a converted weight is from the file's values.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversionReport {
    pub name: String,
    pub from: DType,
    pub to: WeightFormat,
    /// Root mean square of the error over that of the values.
    pub relative_rms: f64,
    pub max_abs_error: f64,
}

/// A weight ready for a static graph tensor.
pub struct Converted {
    pub data_type: DataType,
    pub bytes: Vec<u8>,
    pub report: ConversionReport,
}

fn cast_blocks<T: bytemuck::Pod>(bytes: &[u8]) -> std::borrow::Cow<'_, [T]> {
    // The file's data is aligned for every block type; copy otherwise.
    match bytemuck::try_cast_slice(bytes) {
        Ok(blocks) => std::borrow::Cow::Borrowed(blocks),
        Err(_) => {
            let mut blocks = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
            let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut blocks);
            let n = dst.len();
            dst.copy_from_slice(&bytes[..n]);
            std::borrow::Cow::Owned(blocks)
        }
    }
}

/// The weight's values as f32, whatever its GGUF type.
pub fn dequantize(name: &str, desc: &WeightDesc, bytes: &[u8]) -> Result<Vec<f32>> {
    let n: usize = desc.shape.iter().product();
    let bad = |message: String| Error::BadWeight {
        name: name.to_string(),
        message,
    };
    if desc.dtype.bytes_for(n) != Some(bytes.len()) {
        return Err(bad(format!(
            "{} bytes for {n} {} values",
            bytes.len(),
            desc.dtype
        )));
    }
    let mut out = vec![0f32; n];
    match desc.dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::Q4_0 => quant::dequantize_row_q4_0(&cast_blocks::<BlockQ4_0>(bytes), &mut out),
        DType::Q4_1 => quant::dequantize_row_q4_1(&cast_blocks::<BlockQ4_1>(bytes), &mut out),
        DType::Q8_0 => quant::dequantize_row_q8_0(&cast_blocks::<BlockQ8_0>(bytes), &mut out),
        DType::Q4_K => kquant::dequantize_row_q4_k(&cast_blocks::<BlockQ4K>(bytes), &mut out),
        DType::Q5_K => kquant::dequantize_row_q5_k(&cast_blocks::<BlockQ5K>(bytes), &mut out),
        DType::Q6_K => kquant::dequantize_row_q6_k(&cast_blocks::<BlockQ6K>(bytes), &mut out),
        DType::I32 | DType::U8 => {
            return Err(bad(format!("{} is not a weight type", desc.dtype)));
        }
    }
    Ok(out)
}

/// Whether [`dequantize`] reads this type.
pub fn convertible(dtype: DType) -> bool {
    !matches!(dtype, DType::I32 | DType::U8)
}

/// fp16 values of a vector (norm weights are always fp16).
pub fn to_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// Converts a `[rows, cols]` matrix to `format`, measuring the error.
pub fn convert_matrix(
    name: &str,
    desc: &WeightDesc,
    bytes: &[u8],
    format: WeightFormat,
) -> Result<Converted> {
    let values = dequantize(name, desc, bytes)?;
    let cols = desc.shape.last().copied().unwrap_or(1).max(1);
    let rows = values.len() / cols;
    let mut err_sq = 0f64;
    let mut val_sq = 0f64;
    let mut max_abs = 0f64;
    let mut account = |want: f32, got: f32| {
        let e = f64::from(want) - f64::from(got);
        err_sq += e * e;
        val_sq += f64::from(want) * f64::from(want);
        max_abs = max_abs.max(e.abs());
    };
    let (data_type, bytes) = match format.max_level() {
        None => {
            let mut out = Vec::with_capacity(values.len() * 2);
            for &v in &values {
                let h = f16::from_f32(v);
                account(v, h.to_f32());
                out.extend_from_slice(&h.to_le_bytes());
            }
            (DataType::F16, out)
        }
        Some(level) => {
            let mut scales = Vec::with_capacity(rows);
            let mut out = Vec::with_capacity(values.len());
            for row in values.chunks_exact(cols) {
                let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = if max > 0.0 { max / level } else { 1.0 };
                for &v in row {
                    let q = (v / scale).round().clamp(-level, level);
                    account(v, q * scale);
                    out.push(q as i8 as u8);
                }
                scales.push(scale);
            }
            let bitwidth = if format == WeightFormat::Int4 { 4 } else { 8 };
            (
                DataType::SFixed8PerAxis {
                    axis: 0,
                    bitwidth,
                    scales,
                },
                out,
            )
        }
    };
    Ok(Converted {
        data_type,
        bytes,
        report: ConversionReport {
            name: name.to_string(),
            from: desc.dtype,
            to: format,
            relative_rms: if val_sq > 0.0 {
                (err_sq / val_sq).sqrt()
            } else {
                0.0
            },
            max_abs_error: max_abs,
        },
    })
}
