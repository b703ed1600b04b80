//! Matmul weights repacked in 8-row groups for the fast group kernels
//! (`coordgen_kernels::repack`), made once per weight and shared.

use crate::Error;
use coordgen_graph::{DType, WeightBytes};
use coordgen_kernels::repack::{self as kr, BlockQ4_0x8, BlockQ4_1x8, BlockQ8_0x8};
use coordgen_kernels::{BlockQ4_0, BlockQ4_1, BlockQ8_0};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Whether a `rows × cols` matmul weight of `dtype` has a repacked form.
pub(crate) fn repackable(dtype: DType, rows: usize, cols: usize) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0)
        && rows.is_multiple_of(kr::GROUP)
        && cols.is_multiple_of(coordgen_kernels::QK)
}

/// Owned, 8-byte aligned bytes of one repacked weight.
struct Repacked(Vec<u64>, usize);

impl AsRef<[u8]> for Repacked {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.0)[..self.1]
    }
}

/// Repacked weights by name, shared by every subgraph of a backend.
#[derive(Clone, Default)]
pub struct RepackCache {
    map: Arc<Mutex<HashMap<String, WeightBytes>>>,
}

impl RepackCache {
    /// The repacked bytes of weight `name` (row-major bytes `src`), made on
    /// first use.
    pub(crate) fn get(
        &self,
        name: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
        src: &[u8],
    ) -> Result<WeightBytes, Error> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bytes) = map.get(name) {
            return Ok(bytes.clone());
        }
        let bytes = repack(name, dtype, rows, cols, src)?;
        map.insert(name.to_string(), bytes.clone());
        Ok(bytes)
    }

    /// Names of the weights held repacked.
    pub fn names(&self) -> Vec<String> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.keys().cloned().collect()
    }

    /// Bytes held by repacked weights.
    pub fn bytes(&self) -> usize {
        let map = self
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.values().map(|b| b.as_slice().len()).sum()
    }
}

fn repack(
    name: &str,
    dtype: DType,
    rows: usize,
    cols: usize,
    src: &[u8],
) -> Result<WeightBytes, Error> {
    let bad = |message: String| Error::BadWeight {
        name: name.to_string(),
        message,
    };
    let words = vec![0u64; src.len().div_ceil(8)];
    let mut owned = Repacked(words, src.len());
    {
        let dst: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut owned.0)[..src.len()];
        fn views<'a, S: bytemuck::Pod, D: bytemuck::Pod>(
            src: &'a [u8],
            dst: &'a mut [u8],
        ) -> Result<(&'a [S], &'a mut [D]), String> {
            Ok((
                bytemuck::try_cast_slice(src).map_err(|e| e.to_string())?,
                bytemuck::try_cast_slice_mut(dst).map_err(|e| e.to_string())?,
            ))
        }
        match dtype {
            DType::Q4_0 => {
                let (s, d) = views::<BlockQ4_0, BlockQ4_0x8>(src, dst).map_err(bad)?;
                kr::repack_q4_0(s, rows, cols, d)?;
            }
            DType::Q4_1 => {
                let (s, d) = views::<BlockQ4_1, BlockQ4_1x8>(src, dst).map_err(bad)?;
                kr::repack_q4_1(s, rows, cols, d)?;
            }
            DType::Q8_0 => {
                let (s, d) = views::<BlockQ8_0, BlockQ8_0x8>(src, dst).map_err(bad)?;
                kr::repack_q8_0(s, rows, cols, d)?;
            }
            other => return Err(bad(format!("{other} weights are not repacked"))),
        }
    }
    let len = src.len();
    WeightBytes::new(Arc::new(owned), 0..len).ok_or_else(|| bad("repacked size".into()))
}
