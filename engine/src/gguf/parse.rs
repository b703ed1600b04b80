//! The GGUF header parser: a bounds-checked cursor over untrusted bytes.
//!
//! Every read goes through [`Cursor`], which returns a typed error instead of
//! reading past the end; every count is checked against the bytes that remain
//! before anything is allocated.

use std::collections::HashMap;

use super::{
    ggml_type_name, meta_type, min_encoded_size, out_of_range, tensor_sizes, usize_to_u64,
    wrong_type, Header, MetaArray, MetaValue, TensorInfo, TensorType, ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_NESTING, MAX_DIMS, MIN_KV_BYTES,
    MIN_TENSOR_INFO_BYTES,
};
use crate::{Error, Result};
/// Initial capacity for a collection of `count` parsed items. Counts are
/// already bounded by the bytes left, but an item in memory (a `String`, a
/// `MetaArray`) is larger than its smallest encoding, so a hostile count
/// would still reserve several times the file size up front; beyond this cap
/// the collection grows only as items actually parse.
fn preallocation(count: usize) -> usize {
    const MAX_PREALLOCATED_ITEMS: usize = 1 << 16;
    count.min(MAX_PREALLOCATED_ITEMS)
}

/// Copies exactly `N` bytes; callers pass slices of length `N` (from
/// `chunks_exact` or `take(N)`), and a shorter slice leaves zeros instead of
/// panicking.
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (dst, src) in out.iter_mut().zip(bytes) {
        *dst = *src;
    }
    out
}

/// A bounds-checked reader over the file. Errors it creates leave `item`
/// empty; [`with_item`] fills in which key or tensor was being read.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn offset(&self) -> u64 {
        usize_to_u64(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end));
        match slice {
            Some(slice) => {
                self.pos += n;
                Ok(slice)
            }
            None => Err(Error::TruncatedFile {
                item: String::new(),
                what,
                offset: self.offset(),
                needed: usize_to_u64(n),
                file_len: usize_to_u64(self.bytes.len()),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        self.take(N, what).map(le_array)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Reads a u64 count of items that take at least `min_item_bytes` each,
    /// and rejects it unless that many could fit in the rest of the file.
    fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize> {
        let offset = self.offset();
        let count = self.u64(what)?;
        let remaining = self.remaining();
        let fits = usize::try_from(count).ok().filter(|&n| {
            n.checked_mul(min_item_bytes)
                .is_some_and(|b| b <= remaining)
        });
        fits.ok_or(Error::LengthPastEnd {
            item: String::new(),
            what,
            offset,
            length: count,
            remaining: usize_to_u64(remaining),
        })
    }

    fn str(&mut self, what: &'static str) -> Result<&'a str> {
        let len = self.count(what, 1)?;
        let offset = self.offset();
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map_err(|_| Error::NonUtf8String {
            item: String::new(),
            offset,
        })
    }

    /// `count` elements of `size` bytes each (the count was already checked
    /// against the remaining bytes, so this cannot allocate past the file).
    fn elements(&mut self, count: usize, size: usize, what: &'static str) -> Result<&'a [u8]> {
        let total = count.checked_mul(size).ok_or(Error::LengthPastEnd {
            item: String::new(),
            what,
            offset: self.offset(),
            length: usize_to_u64(count),
            remaining: usize_to_u64(self.remaining()),
        })?;
        self.take(total, what)
    }
}

/// Names the key or tensor in a cursor error that does not name one yet.
fn with_item(mut err: Error, item: impl FnOnce() -> String) -> Error {
    if let Error::TruncatedFile { item: slot, .. }
    | Error::LengthPastEnd { item: slot, .. }
    | Error::NonUtf8String { item: slot, .. } = &mut err
    {
        if slot.is_empty() {
            *slot = item();
        }
    }
    err
}

/// Decodes fixed-size little-endian scalars from a checked byte run.
macro_rules! read_scalars {
    ($cursor:expr, $count:expr, $ty:ty) => {{
        const SIZE: usize = std::mem::size_of::<$ty>();
        $cursor
            .elements($count, SIZE, "array elements")?
            .chunks_exact(SIZE)
            .map(|chunk| <$ty>::from_le_bytes(le_array(chunk)))
            .collect::<Vec<$ty>>()
    }};
}

fn read_bool(cursor: &mut Cursor<'_>, key: &str) -> Result<bool> {
    let offset = cursor.offset();
    match cursor.u8("bool value")? {
        0 => Ok(false),
        1 => Ok(true),
        byte => Err(Error::InvalidBool {
            key: key.to_owned(),
            offset,
            byte,
        }),
    }
}

fn read_value(
    cursor: &mut Cursor<'_>,
    key: &str,
    type_id: u32,
    type_offset: u64,
) -> Result<MetaValue> {
    use meta_type::*;
    Ok(match type_id {
        U8 => MetaValue::U8(u8::from_le_bytes(cursor.array("u8 value")?)),
        I8 => MetaValue::I8(i8::from_le_bytes(cursor.array("i8 value")?)),
        U16 => MetaValue::U16(u16::from_le_bytes(cursor.array("u16 value")?)),
        I16 => MetaValue::I16(i16::from_le_bytes(cursor.array("i16 value")?)),
        U32 => MetaValue::U32(u32::from_le_bytes(cursor.array("u32 value")?)),
        I32 => MetaValue::I32(i32::from_le_bytes(cursor.array("i32 value")?)),
        U64 => MetaValue::U64(u64::from_le_bytes(cursor.array("u64 value")?)),
        I64 => MetaValue::I64(i64::from_le_bytes(cursor.array("i64 value")?)),
        F32 => MetaValue::F32(f32::from_le_bytes(cursor.array("f32 value")?)),
        F64 => MetaValue::F64(f64::from_le_bytes(cursor.array("f64 value")?)),
        BOOL => MetaValue::Bool(read_bool(cursor, key)?),
        STRING => MetaValue::String(cursor.str("string length")?.to_owned()),
        ARRAY => MetaValue::Array(read_array(cursor, key, 1)?),
        _ => {
            return Err(Error::UnknownMetaType {
                key: key.to_owned(),
                type_id,
                offset: type_offset,
            })
        }
    })
}

/// Reads `elem type | len | elems`; `depth` is this array's nesting level.
fn read_array(cursor: &mut Cursor<'_>, key: &str, depth: usize) -> Result<MetaArray> {
    use meta_type::*;
    if depth > MAX_ARRAY_NESTING {
        return Err(Error::NestingTooDeep {
            key: key.to_owned(),
            max_depth: MAX_ARRAY_NESTING,
        });
    }
    let type_offset = cursor.offset();
    let elem_type = cursor.u32("array element type")?;
    let min_size = min_encoded_size(elem_type).ok_or_else(|| Error::UnknownMetaType {
        key: key.to_owned(),
        type_id: elem_type,
        offset: type_offset,
    })?;
    let count = cursor.count("array length", min_size)?;
    Ok(match elem_type {
        U8 => MetaArray::U8(read_scalars!(cursor, count, u8)),
        I8 => MetaArray::I8(read_scalars!(cursor, count, i8)),
        U16 => MetaArray::U16(read_scalars!(cursor, count, u16)),
        I16 => MetaArray::I16(read_scalars!(cursor, count, i16)),
        U32 => MetaArray::U32(read_scalars!(cursor, count, u32)),
        I32 => MetaArray::I32(read_scalars!(cursor, count, i32)),
        U64 => MetaArray::U64(read_scalars!(cursor, count, u64)),
        I64 => MetaArray::I64(read_scalars!(cursor, count, i64)),
        F32 => MetaArray::F32(read_scalars!(cursor, count, f32)),
        F64 => MetaArray::F64(read_scalars!(cursor, count, f64)),
        BOOL => {
            let mut values = Vec::with_capacity(preallocation(count));
            for _ in 0..count {
                values.push(read_bool(cursor, key)?);
            }
            MetaArray::Bool(values)
        }
        STRING => {
            let mut values = Vec::with_capacity(preallocation(count));
            for _ in 0..count {
                values.push(cursor.str("string length")?.to_owned());
            }
            MetaArray::String(values)
        }
        // `min_encoded_size` accepted the id, so this is ARRAY.
        _ => {
            let mut values = Vec::with_capacity(preallocation(count));
            for _ in 0..count {
                values.push(read_array(cursor, key, depth + 1)?);
            }
            MetaArray::Array(values)
        }
    })
}

fn read_tensor_info(cursor: &mut Cursor<'_>) -> Result<TensorInfo> {
    let name = cursor.str("tensor name length")?.to_owned();
    let in_tensor = |err| with_item(err, || format!("tensor {name:?}"));
    let n_dims = cursor.u32("n_dims").map_err(in_tensor)?;
    if usize::try_from(n_dims).map_or(true, |n| n > MAX_DIMS) {
        return Err(Error::TooManyDims { name, n_dims });
    }
    let mut dims = Vec::with_capacity(MAX_DIMS);
    for _ in 0..n_dims {
        dims.push(cursor.u64("dimension").map_err(in_tensor)?);
    }
    let type_id = cursor.u32("tensor type").map_err(in_tensor)?;
    let offset = cursor.u64("tensor data offset").map_err(in_tensor)?;
    let ty = match TensorType::from_ggml_type_id(type_id) {
        Some(ty) => ty,
        None if ggml_type_name(type_id).is_some() => {
            return Err(Error::UnsupportedTensorType { name, type_id })
        }
        None => return Err(Error::UnknownTensorType { name, type_id }),
    };
    let (n_elements, n_bytes) = tensor_sizes(&name, &dims, ty)?;
    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}

/// Reads `general.alignment` if present, checking it is usable.
fn alignment_of(
    metadata_index: &HashMap<String, usize>,
    metadata: &[(String, MetaValue)],
) -> Result<u64> {
    let Some((_, value)) = metadata_index
        .get(ALIGNMENT_KEY)
        .and_then(|&i| metadata.get(i))
    else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    if !value.is_integer() {
        return Err(wrong_type(ALIGNMENT_KEY, "u32", value));
    }
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= u64::from(u32::MAX) => Ok(a),
        Some(a) => Err(Error::BadAlignment { value: a }),
        None => Err(out_of_range(ALIGNMENT_KEY, "u32", Some(value))),
    }
}

/// Parses and validates everything up to the tensor data.
pub(super) fn parse(bytes: &[u8]) -> Result<Header> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let in_header = |err| with_item(err, || "the header".to_owned());

    let magic: [u8; 4] = cursor.array("magic").map_err(in_header)?;
    if magic != GGUF_MAGIC {
        return Err(Error::BadMagic { found: magic });
    }
    let version = cursor.u32("version").map_err(in_header)?;
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion { version });
    }
    let n_tensors = cursor
        .count("tensor count", MIN_TENSOR_INFO_BYTES)
        .map_err(in_header)?;
    let n_kv = cursor
        .count("metadata count", MIN_KV_BYTES)
        .map_err(in_header)?;

    let mut metadata = Vec::with_capacity(preallocation(n_kv));
    let mut metadata_index = HashMap::with_capacity(preallocation(n_kv));
    for kv_number in 0..n_kv {
        let key = cursor
            .str("key length")
            .map_err(|e| with_item(e, || format!("metadata entry #{kv_number}")))?;
        let in_key = |err| with_item(err, || format!("metadata key {key:?}"));
        let type_offset = cursor.offset();
        let type_id = cursor.u32("value type").map_err(in_key)?;
        let value = read_value(&mut cursor, key, type_id, type_offset).map_err(in_key)?;
        if metadata_index.contains_key(key) {
            return Err(Error::DuplicateKey {
                key: key.to_owned(),
            });
        }
        metadata_index.insert(key.to_owned(), metadata.len());
        metadata.push((key.to_owned(), value));
    }

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(preallocation(n_tensors));
    let mut tensor_index = HashMap::with_capacity(preallocation(n_tensors));
    for tensor_number in 0..n_tensors {
        let info = read_tensor_info(&mut cursor)
            .map_err(|e| with_item(e, || format!("tensor #{tensor_number}")))?;
        if tensor_index.contains_key(&info.name) {
            return Err(Error::DuplicateTensor { name: info.name });
        }
        tensor_index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
    }

    let alignment = alignment_of(&metadata_index, &metadata)?;
    let header_end = cursor.offset();
    let file_len = usize_to_u64(bytes.len());
    // header_end <= file_len and alignment <= u32::MAX, so this cannot
    // overflow; checked anyway to keep the arithmetic obviously total.
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .unwrap_or(u64::MAX);
    if data_offset > file_len && !tensors.is_empty() {
        return Err(Error::TruncatedFile {
            item: "the tensor data section".to_owned(),
            what: "alignment padding",
            offset: header_end,
            needed: data_offset - header_end,
            file_len,
        });
    }
    let data_len = file_len.saturating_sub(data_offset);
    for tensor in &tensors {
        if tensor.offset % alignment != 0 {
            return Err(Error::MisalignedTensor {
                name: tensor.name.clone(),
                offset: tensor.offset,
                alignment,
            });
        }
        if tensor
            .offset
            .checked_add(tensor.n_bytes)
            .is_none_or(|end| end > data_len)
        {
            return Err(Error::TensorOutOfBounds {
                name: tensor.name.clone(),
                offset: tensor.offset,
                n_bytes: tensor.n_bytes,
                data_len,
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
    })
}
