//! GGUF reader (format versions 2 and 3, little-endian) and a small writer.
//!
//! [`GgufFile::open`] maps the file read-only with memmap2; tensor data is
//! handed out as slices of that mapping, never copied. [`GgufFile::from_bytes`]
//! parses an owned buffer the same way (tests, tools).
//!
//! The parser treats the file as hostile: every fixed-size read, every length
//! and count is checked against the bytes that remain *before* anything is
//! allocated, every size computation is checked arithmetic, and every problem
//! comes back as a typed [`Error`] variant naming the key, tensor and offset.
//!
//! Layout (all integers little-endian):
//! `magic "GGUF" | version u32 | n_tensors u64 | n_kv u64 | n_kv × (key string,
//! value type u32, value) | n_tensors × (name string, n_dims u32, dims u64 ×
//! n_dims, ggml type u32, offset u64) | padding to alignment | tensor data`.
//! A string is `len u64 | bytes`; an array is `elem type u32 | len u64 | elems`.

mod parse;
mod writer;

#[cfg(test)]
mod tests;

pub use writer::GgufWriter;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use memmap2::Mmap;

use crate::{Error, Result};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when the file does not
/// set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most dimensions a tensor may have (as in ggml).
pub const MAX_DIMS: usize = 4;
/// Deepest array nesting accepted; bounds the parser's recursion so a hostile
/// file cannot overflow the stack (which would abort, not return an error).
pub const MAX_ARRAY_NESTING: usize = 16;

/// GGUF metadata value type ids, as stored in the file.
pub mod meta_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Fewest bytes one encoded value of `type_id` can take, or `None` for an
/// unknown type id. Used to reject counts that cannot fit before allocating.
fn min_encoded_size(type_id: u32) -> Option<usize> {
    use meta_type::*;
    Some(match type_id {
        U8 | I8 | BOOL => 1,
        U16 | I16 => 2,
        U32 | I32 | F32 => 4,
        U64 | I64 | F64 => 8,
        STRING => 8,    // the length prefix
        ARRAY => 4 + 8, // element type + length
        _ => return None,
    })
}

/// Smallest metadata entry: empty key (8) + value type (4) + 1-byte value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

// ---------------------------------------------------------------------------
// Metadata values
// ---------------------------------------------------------------------------

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

/// A homogeneous metadata array; arrays of arrays hold one [`MetaArray`] per
/// element, each with its own element type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaValue {
    /// The value as `u64` if it is an integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as `i64` if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as `f32` if it is a float (an F64 is rounded to nearest).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetaValue::F32(v) => Some(v),
            // Float narrowing, not a length: rounding is the intent.
            MetaValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_string_array(&self) -> Option<&[String]> {
        match self {
            MetaValue::Array(MetaArray::String(v)) => Some(v),
            _ => None,
        }
    }

    pub fn as_i32_array(&self) -> Option<&[i32]> {
        match self {
            MetaValue::Array(MetaArray::I32(v)) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_array(&self) -> Option<&[f32]> {
        match self {
            MetaValue::Array(MetaArray::F32(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether the value is one of the eight integer types.
    pub fn is_integer(&self) -> bool {
        matches!(
            self,
            MetaValue::U8(_)
                | MetaValue::I8(_)
                | MetaValue::U16(_)
                | MetaValue::I16(_)
                | MetaValue::U32(_)
                | MetaValue::I32(_)
                | MetaValue::U64(_)
                | MetaValue::I64(_)
        )
    }

    /// Short type name for error messages: `u32`, `string`, `array`, ...
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The GGUF value type id this value is stored with.
    pub fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => meta_type::U8,
            MetaValue::I8(_) => meta_type::I8,
            MetaValue::U16(_) => meta_type::U16,
            MetaValue::I16(_) => meta_type::I16,
            MetaValue::U32(_) => meta_type::U32,
            MetaValue::I32(_) => meta_type::I32,
            MetaValue::U64(_) => meta_type::U64,
            MetaValue::I64(_) => meta_type::I64,
            MetaValue::F32(_) => meta_type::F32,
            MetaValue::F64(_) => meta_type::F64,
            MetaValue::Bool(_) => meta_type::BOOL,
            MetaValue::String(_) => meta_type::STRING,
            MetaValue::Array(_) => meta_type::ARRAY,
        }
    }
}

impl fmt::Display for MetaValue {
    /// Scalars print their value, strings are quoted, arrays print their
    /// element type and length (a 49k-entry vocabulary is not printed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::U8(v) => write!(f, "{v}"),
            MetaValue::I8(v) => write!(f, "{v}"),
            MetaValue::U16(v) => write!(f, "{v}"),
            MetaValue::I16(v) => write!(f, "{v}"),
            MetaValue::U32(v) => write!(f, "{v}"),
            MetaValue::I32(v) => write!(f, "{v}"),
            MetaValue::U64(v) => write!(f, "{v}"),
            MetaValue::I64(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::Array(a) => write!(f, "{}[{}]", a.type_name(), a.len()),
        }
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `array<ELEM>` with the element type name, e.g. `array<string>`.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaArray::U8(_) => "array<u8>",
            MetaArray::I8(_) => "array<i8>",
            MetaArray::U16(_) => "array<u16>",
            MetaArray::I16(_) => "array<i16>",
            MetaArray::U32(_) => "array<u32>",
            MetaArray::I32(_) => "array<i32>",
            MetaArray::U64(_) => "array<u64>",
            MetaArray::I64(_) => "array<i64>",
            MetaArray::F32(_) => "array<f32>",
            MetaArray::F64(_) => "array<f64>",
            MetaArray::Bool(_) => "array<bool>",
            MetaArray::String(_) => "array<string>",
            MetaArray::Array(_) => "array<array>",
        }
    }

    /// The GGUF value type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        match self {
            MetaArray::U8(_) => meta_type::U8,
            MetaArray::I8(_) => meta_type::I8,
            MetaArray::U16(_) => meta_type::U16,
            MetaArray::I16(_) => meta_type::I16,
            MetaArray::U32(_) => meta_type::U32,
            MetaArray::I32(_) => meta_type::I32,
            MetaArray::U64(_) => meta_type::U64,
            MetaArray::I64(_) => meta_type::I64,
            MetaArray::F32(_) => meta_type::F32,
            MetaArray::F64(_) => meta_type::F64,
            MetaArray::Bool(_) => meta_type::BOOL,
            MetaArray::String(_) => meta_type::STRING,
            MetaArray::Array(_) => meta_type::ARRAY,
        }
    }
}

// ---------------------------------------------------------------------------
// Tensor types and infos
// ---------------------------------------------------------------------------

/// The tensor storage types this engine reads. Quantized layouts are the
/// ggml ones (see `coordgen-kernels` for the block structs).
#[allow(non_camel_case_types)] // the ggml names, kept recognisable
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl TensorType {
    /// Every supported type, for tests and tools.
    pub const ALL: [TensorType; 9] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::BF16,
        TensorType::Q4_0,
        TensorType::Q4_1,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q5_K,
        TensorType::Q6_K,
    ];

    /// Elements per block (1 for the float types).
    pub fn block_len(self) -> u64 {
        match self {
            TensorType::F32 | TensorType::F16 | TensorType::BF16 => 1,
            TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0 => 32,
            TensorType::Q4_K | TensorType::Q5_K | TensorType::Q6_K => 256,
        }
    }

    /// Bytes per block (the element size for the float types).
    pub fn block_bytes(self) -> u64 {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 | TensorType::BF16 => 2,
            TensorType::Q4_0 => 18,  // f16 scale + 16 bytes of nibbles
            TensorType::Q4_1 => 20,  // f16 scale + f16 min + 16 bytes of nibbles
            TensorType::Q8_0 => 34,  // f16 scale + 32 i8
            TensorType::Q4_K => 144, // f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
            TensorType::Q5_K => 176, // as Q4_K plus 32 bytes of high bits
            TensorType::Q6_K => 210, // 128 low nibbles, 64 bytes of high 2 bits, 16 i8 scales, f16 d
        }
    }

    /// The ggml name: `F32`, `Q4_0`, ...
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::BF16 => "BF16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q4_K => "Q4_K",
            TensorType::Q5_K => "Q5_K",
            TensorType::Q6_K => "Q6_K",
        }
    }

    /// The ggml type id stored in the file.
    pub fn ggml_type_id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q4_1 => 3,
            TensorType::Q8_0 => 8,
            TensorType::Q4_K => 12,
            TensorType::Q5_K => 13,
            TensorType::Q6_K => 14,
            TensorType::BF16 => 30,
        }
    }

    /// The supported type with this ggml id, if any.
    pub fn from_ggml_type_id(type_id: u32) -> Option<TensorType> {
        TensorType::ALL
            .into_iter()
            .find(|ty| ty.ggml_type_id() == type_id)
    }

    /// Element count and byte size of a tensor of this type with `dims`;
    /// `None` if either overflows `u64` or the first dimension is not a whole
    /// number of blocks.
    fn sizes(self, dims: &[u64]) -> std::result::Result<(u64, u64), SizeError> {
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(SizeError::Overflow)?;
        // A 0-dimensional tensor is a scalar: one element in its first "row".
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % self.block_len() != 0 {
            return Err(SizeError::NotBlockAligned { ne0 });
        }
        let n_bytes = (n_elements / self.block_len())
            .checked_mul(self.block_bytes())
            .ok_or(SizeError::Overflow)?;
        Ok((n_elements, n_bytes))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

enum SizeError {
    Overflow,
    NotBlockAligned { ne0: u64 },
}

/// Computes `(n_elements, n_bytes)` for a tensor, with the typed error.
pub(crate) fn tensor_sizes(name: &str, dims: &[u64], ty: TensorType) -> Result<(u64, u64)> {
    if dims.len() > MAX_DIMS {
        return Err(Error::TooManyDims {
            name: name.to_owned(),
            n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
        });
    }
    ty.sizes(dims).map_err(|e| match e {
        SizeError::Overflow => Error::TensorSizeOverflow {
            name: name.to_owned(),
            dims: dims.to_vec(),
        },
        SizeError::NotBlockAligned { ne0 } => Error::RowNotBlockAligned {
            name: name.to_owned(),
            ty: ty.name(),
            ne0,
            block_len: ty.block_len(),
        },
    })
}

/// Name of a ggml type id that some ggml version defines, supported or not;
/// `None` for ids never defined or since removed (Q4_2, Q4_0_4_4, ...).
pub fn ggml_type_name(type_id: u32) -> Option<&'static str> {
    Some(match type_id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions, `ne0` (the contiguous one) first, as stored in the file.
    pub dims: Vec<u64>,
    pub ty: TensorType,
    /// Offset of the data relative to [`GgufFile::data_offset`].
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

/// The bytes a [`GgufFile`] reads from.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A parsed GGUF file: metadata and tensor infos, plus the bytes they point
/// into. Cheap to share behind an `Arc` (`Send + Sync`).
pub struct GgufFile {
    storage: Storage,
    header: Header,
}

/// Everything parsed from the header; independent of where the bytes live.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Maps `path` read-only and parses it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let open_error = |reason| Error::Open {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(open_error)?;
        // SAFETY: the mapping is read-only and we never hand out a mutable
        // view. Mapping a file is only unsound if another process truncates
        // or rewrites it while mapped; model files are treated as immutable
        // while loaded (the same contract llama.cpp and safetensors rely on).
        let map = unsafe { Mmap::map(&file) }.map_err(open_error)?;
        let header = parse::parse(&map)?;
        Ok(GgufFile {
            storage: Storage::Mapped(map),
            header,
        })
    }

    /// Parses an in-memory file. Note that a `Vec<u8>` is only byte-aligned,
    /// so tensor data may not be aligned in memory the way a mapping is.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        let header = parse::parse(&bytes)?;
        Ok(GgufFile {
            storage: Storage::Owned(bytes),
            header,
        })
    }

    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Drops this process's resident copy of tensor `name`'s bytes (the
    /// whole pages inside them) when the file is memory-mapped; a later read
    /// pages them back in from the file. The engine calls it for weights a
    /// backend keeps in a repacked copy, so the model is not resident twice.
    /// Returns the bytes released (0 for an in-memory file, an unknown
    /// tensor, or when the OS declines).
    pub fn release_tensor_pages(&self, name: &str) -> usize {
        let Storage::Mapped(map) = &self.storage else {
            return 0;
        };
        let Some(t) = self.tensor(name) else {
            return 0;
        };
        let Some(start) = usize::try_from(self.header.data_offset.saturating_add(t.offset)).ok()
        else {
            return 0;
        };
        let end = start.saturating_add(usize::try_from(t.n_bytes).unwrap_or(0));
        let page = 4096;
        let base = map.as_ptr() as usize;
        // Only whole pages inside the tensor, so no neighbour is touched.
        let first = (base + start).div_ceil(page) * page - base;
        let last = ((base + end.min(map.len())) / page) * page - base;
        if last <= first {
            return 0;
        }
        // SAFETY: the mapping is read-only and private, so its pages are
        // never modified: MADV_DONTNEED only drops them from this process,
        // and the next access reads the same bytes from the file again.
        let advised = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
        if advised.is_ok() {
            last - first
        } else {
            0
        }
    }

    /// The alignment of the data section and of each tensor's data.
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    pub fn file_len(&self) -> u64 {
        usize_to_u64(self.bytes().len())
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let index = *self.header.metadata_index.get(key)?;
        self.header.metadata.get(index).map(|(_, value)| value)
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let index = *self.header.tensor_index.get(name)?;
        self.header.tensors.get(index)
    }

    /// The tensor's data, a slice of the mapping (no copy). Bounds were
    /// checked at parse time; a `TensorInfo` from a different file whose
    /// range does not fit this one gets an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .header
            .data_offset
            .checked_add(t.offset)
            .and_then(|start| Some((start, start.checked_add(t.n_bytes)?)))
            .and_then(|(start, end)| {
                Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
            });
        range
            .and_then(|range| self.bytes().get(range))
            .unwrap_or(&[])
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            key: key.to_owned(),
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let value = self.require(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "string", value))
    }

    /// Any integer type whose value fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let value = self.get_u64_or_i64(key, "u32")?;
        value
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| out_of_range(key, "u32", self.get(key)))
    }

    /// Any integer type whose value is not negative.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get_u64_or_i64(key, "u64")?
            .ok_or_else(|| out_of_range(key, "u64", self.get(key)))
    }

    /// Checks the key is an integer; `Ok(None)` if it is negative.
    fn get_u64_or_i64(&self, key: &str, expected: &'static str) -> Result<Option<u64>> {
        let value = self.require(key)?;
        if !value.is_integer() {
            return Err(wrong_type(key, expected, value));
        }
        Ok(value.as_u64())
    }

    /// F32, or F64 rounded to `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let value = self.require(key)?;
        value.as_f32().ok_or_else(|| wrong_type(key, "f32", value))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let value = self.require(key)?;
        value
            .as_bool()
            .ok_or_else(|| wrong_type(key, "bool", value))
    }

    pub fn get_array(&self, key: &str) -> Result<&MetaArray> {
        let value = self.require(key)?;
        value
            .as_array()
            .ok_or_else(|| wrong_type(key, "array", value))
    }

    pub fn get_string_array(&self, key: &str) -> Result<&[String]> {
        let value = self.require(key)?;
        value
            .as_string_array()
            .ok_or_else(|| wrong_type(key, "array<string>", value))
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &MetaValue) -> Error {
    let found = match found {
        MetaValue::Array(array) => array.type_name(),
        other => other.type_name(),
    };
    Error::WrongMetaType {
        key: key.to_owned(),
        expected,
        found,
    }
}

fn out_of_range(key: &str, expected: &'static str, value: Option<&MetaValue>) -> Error {
    Error::MetaOutOfRange {
        key: key.to_owned(),
        expected,
        value: value.map(ToString::to_string).unwrap_or_default(),
    }
}

impl AsRef<[u8]> for GgufFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("file_len", &self.file_len())
            .field("alignment", &self.header.alignment)
            .field("data_offset", &self.header.data_offset)
            .field("n_metadata", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .finish_non_exhaustive()
    }
}

/// Lossless on every platform Rust supports (usize is at most 64 bits).
fn usize_to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}
