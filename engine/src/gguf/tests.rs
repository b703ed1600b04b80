//! Unit tests: writer → reader round trips, one test per malformed-input
//! variant, and the real model when it has been fetched.

use super::*;

/// Hand-assembles GGUF bytes for cases the writer cannot express.
#[derive(Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(Vec::new())
            .bytes(b"GGUF")
            .u32(version)
            .u64(n_tensors)
            .u64(n_kv)
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn u32(self, v: u32) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(self, v: u64) -> Raw {
        self.bytes(&v.to_le_bytes())
    }
    fn str(self, s: &[u8]) -> Raw {
        self.u64(s.len() as u64).bytes(s)
    }
    /// A metadata entry with a u32 value.
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key.as_bytes()).u32(meta_type::U32).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Raw {
        let mut raw = self.str(name.as_bytes()).u32(dims.len() as u32);
        for &d in dims {
            raw = raw.u64(d);
        }
        raw.u32(type_id).u64(offset)
    }
    fn pad(mut self, alignment: usize) -> Raw {
        let len = self.0.len().next_multiple_of(alignment);
        self.0.resize(len, 0);
        self
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    fn parse(self) -> Result<GgufFile> {
        GgufFile::from_bytes(self.0)
    }
}

fn parse_err(bytes: Vec<u8>) -> Error {
    GgufFile::from_bytes(bytes).expect_err("malformed input must be rejected")
}

fn every_value() -> Vec<(String, MetaValue)> {
    let values = vec![
        ("t.u8", MetaValue::U8(200)),
        ("t.i8", MetaValue::I8(-100)),
        ("t.u16", MetaValue::U16(60_000)),
        ("t.i16", MetaValue::I16(-30_000)),
        ("t.u32", MetaValue::U32(4_000_000_000)),
        ("t.i32", MetaValue::I32(-2_000_000_000)),
        ("t.u64", MetaValue::U64(u64::MAX)),
        ("t.i64", MetaValue::I64(i64::MIN)),
        ("t.f32", MetaValue::F32(-1.5e-3)),
        ("t.f64", MetaValue::F64(std::f64::consts::PI)),
        ("t.true", MetaValue::Bool(true)),
        ("t.false", MetaValue::Bool(false)),
        ("t.str", MetaValue::String("héllo ✓ 日本".into())),
        ("t.empty_str", MetaValue::String(String::new())),
        ("a.u8", MetaValue::Array(MetaArray::U8(vec![0, 1, 255]))),
        ("a.i8", MetaValue::Array(MetaArray::I8(vec![-128, 0, 127]))),
        ("a.u16", MetaValue::Array(MetaArray::U16(vec![1, 65535]))),
        ("a.i16", MetaValue::Array(MetaArray::I16(vec![-32768, 7]))),
        ("a.u32", MetaValue::Array(MetaArray::U32(vec![u32::MAX, 3]))),
        ("a.i32", MetaValue::Array(MetaArray::I32(vec![-1, 2, -3]))),
        ("a.u64", MetaValue::Array(MetaArray::U64(vec![u64::MAX]))),
        ("a.i64", MetaValue::Array(MetaArray::I64(vec![i64::MIN, 9]))),
        ("a.f32", MetaValue::Array(MetaArray::F32(vec![0.5, -2.0]))),
        ("a.f64", MetaValue::Array(MetaArray::F64(vec![1e300]))),
        (
            "a.bool",
            MetaValue::Array(MetaArray::Bool(vec![true, false])),
        ),
        (
            "a.str",
            MetaValue::Array(MetaArray::String(vec![
                "a".into(),
                String::new(),
                "ü".into(),
            ])),
        ),
        ("a.empty", MetaValue::Array(MetaArray::F32(vec![]))),
        (
            "a.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::I32(vec![1, 2]),
                MetaArray::String(vec!["x".into()]),
                MetaArray::Array(vec![MetaArray::Bool(vec![true])]),
                MetaArray::U8(vec![]),
            ])),
        ),
    ];
    values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Deterministic bytes for a tensor of `n` bytes.
fn pattern(n: u64, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn round_trip_every_value_type_v2_and_v3() {
    for version in [2, 3] {
        let mut writer = GgufWriter::new();
        writer.set_version(version);
        for (k, v) in every_value() {
            writer.add_metadata(k, v);
        }
        let file = GgufFile::from_bytes(writer.to_bytes()).unwrap();
        assert_eq!(file.version(), version);
        assert_eq!(file.alignment(), DEFAULT_ALIGNMENT);
        assert_eq!(file.metadata(), every_value().as_slice());
        for (k, v) in every_value() {
            assert_eq!(file.get(&k), Some(&v), "{k}");
        }
        assert!(file.tensors().is_empty());
        assert_eq!(file.data_offset() % 32, 0);
    }
}

#[test]
fn round_trip_every_tensor_type() {
    for alignment in [None, Some(1u32), Some(64), Some(4096)] {
        let mut writer = GgufWriter::new();
        if let Some(a) = alignment {
            writer.add_metadata(ALIGNMENT_KEY, MetaValue::U32(a));
        }
        let shapes: [&[u64]; 9] = [
            &[7],
            &[3, 5],
            &[64, 2, 3],
            &[32],
            &[96, 1, 1, 2],
            &[],
            &[256, 3],
            &[512],
            &[768, 2, 1],
        ];
        let mut expected = Vec::new();
        for (i, (ty, dims)) in TensorType::ALL.into_iter().zip(shapes).enumerate() {
            let dims: Vec<u64> = if ty.block_len() > 1 && dims.is_empty() {
                vec![32]
            } else {
                dims.to_vec()
            };
            let n_elements: u64 = dims.iter().product();
            let n_bytes = n_elements / ty.block_len() * ty.block_bytes();
            let data = pattern(n_bytes, i as u8);
            let name = format!("blk.{i}.{}", ty.name());
            writer.add_tensor(&name, &dims, ty, data.clone()).unwrap();
            expected.push((name, dims, ty, n_elements, n_bytes, data));
        }
        let file = GgufFile::from_bytes(writer.to_bytes()).unwrap();
        let align = u64::from(alignment.unwrap_or(32));
        assert_eq!(file.alignment(), align);
        assert_eq!(file.data_offset() % align, 0);
        assert_eq!(file.tensors().len(), expected.len());
        for (info, (name, dims, ty, n_elements, n_bytes, data)) in
            file.tensors().iter().zip(&expected)
        {
            assert_eq!(&info.name, name);
            assert_eq!(&info.dims, dims);
            assert_eq!(info.ty, *ty);
            assert_eq!(info.n_elements, *n_elements);
            assert_eq!(info.n_bytes, *n_bytes);
            assert_eq!(info.offset % align, 0);
            assert_eq!(file.tensor(name), Some(info));
            assert_eq!(file.tensor_data(info), data.as_slice());
            // Zero-copy: the slice points into the file's own bytes.
            let whole = file.bytes().as_ptr_range();
            let part = file.tensor_data(info).as_ptr_range();
            assert!(whole.start <= part.start && part.end <= whole.end);
        }
        assert!(file.tensor("missing").is_none());
        assert_eq!(file.as_ref().len() as u64, file.file_len());
    }
}

#[test]
fn tensor_type_ids_and_blocks() {
    for ty in TensorType::ALL {
        assert_eq!(TensorType::from_ggml_type_id(ty.ggml_type_id()), Some(ty));
        assert_eq!(ggml_type_name(ty.ggml_type_id()), Some(ty.name()));
    }
    assert_eq!(
        (TensorType::Q4_0.block_len(), TensorType::Q4_0.block_bytes()),
        (32, 18)
    );
    assert_eq!(TensorType::Q4_1.block_bytes(), 20);
    assert_eq!(TensorType::Q8_0.block_bytes(), 34);
    assert_eq!(TensorType::BF16.ggml_type_id(), 30);
    // K-quants: ggml ids 12-14, 256-value super-blocks of ggml's sizes.
    for (ty, id, bytes) in [
        (TensorType::Q4_K, 12, 144),
        (TensorType::Q5_K, 13, 176),
        (TensorType::Q6_K, 14, 210),
    ] {
        assert_eq!(ty.ggml_type_id(), id);
        assert_eq!((ty.block_len(), ty.block_bytes()), (256, bytes));
    }
}

#[test]
fn k_quant_tensors_parse_with_super_block_sizes(
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    for (type_id, ty, block_bytes) in [
        (12, TensorType::Q4_K, 144u64),
        (13, TensorType::Q5_K, 176),
        (14, TensorType::Q6_K, 210),
    ] {
        let file = Raw::header(3, 1, 0)
            .tensor("w", &[512, 2], type_id, 0)
            .pad(32)
            .zeros(4 * block_bytes as usize)
            .parse()?;
        let info = file.tensor("w").ok_or("tensor w is missing")?;
        assert_eq!(info.ty, ty);
        assert_eq!(info.n_elements, 1024);
        assert_eq!(info.n_bytes, 4 * block_bytes);
        assert_eq!(file.tensor_data(info).len() as u64, 4 * block_bytes);
        // A row that is not a whole number of 256-value super-blocks is rejected.
        let err = Raw::header(3, 1, 0)
            .tensor("w", &[32, 8], type_id, 0)
            .pad(32)
            .zeros(4 * block_bytes as usize)
            .parse()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::RowNotBlockAligned {
                    ne0: 32,
                    block_len: 256,
                    ..
                }
            ),
            "{err}"
        );
        // Data past the end: 3 blocks declared, 2 present.
        let err = Raw::header(3, 1, 0)
            .tensor("w", &[768], type_id, 0)
            .pad(32)
            .zeros(2 * block_bytes as usize)
            .parse()
            .unwrap_err();
        assert!(matches!(err, Error::TensorOutOfBounds { .. }), "{err}");
    }
    Ok(())
}

#[test]
fn typed_getters() {
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("s", MetaValue::String("llama".into()))
        .add_metadata("u8", MetaValue::U8(7))
        .add_metadata("i64", MetaValue::I64(30))
        .add_metadata("neg", MetaValue::I32(-1))
        .add_metadata("big", MetaValue::U64(1 << 40))
        .add_metadata("f64", MetaValue::F64(0.25))
        .add_metadata("b", MetaValue::Bool(true))
        .add_metadata(
            "toks",
            MetaValue::Array(MetaArray::String(vec!["a".into()])),
        );
    let file = GgufFile::from_bytes(writer.to_bytes()).unwrap();
    assert_eq!(file.get_str("s").unwrap(), "llama");
    assert_eq!(file.get_u32("u8").unwrap(), 7);
    assert_eq!(file.get_u32("i64").unwrap(), 30);
    assert_eq!(file.get_u64("big").unwrap(), 1 << 40);
    assert_eq!(file.get_f32("f64").unwrap(), 0.25);
    assert!(file.get_bool("b").unwrap());
    assert_eq!(file.get_string_array("toks").unwrap(), ["a"]);
    assert!(matches!(file.get_u32("nope"), Err(Error::MissingKey { key }) if key == "nope"));
    assert!(matches!(
        file.get_u32("s"),
        Err(Error::WrongMetaType {
            expected: "u32",
            found: "string",
            ..
        })
    ));
    assert!(matches!(
        file.get_str("toks"),
        Err(Error::WrongMetaType {
            found: "array<string>",
            ..
        })
    ));
    assert!(matches!(
        file.get_f32("u8"),
        Err(Error::WrongMetaType { .. })
    ));
    assert!(matches!(
        file.get_bool("u8"),
        Err(Error::WrongMetaType { .. })
    ));
    assert!(matches!(
        file.get_u32("neg"),
        Err(Error::MetaOutOfRange { ref value, .. }) if value == "-1"
    ));
    assert!(matches!(
        file.get_u32("big"),
        Err(Error::MetaOutOfRange { .. })
    ));
}

#[test]
fn meta_value_accessors() {
    assert_eq!(MetaValue::I8(-1).as_u64(), None);
    assert_eq!(MetaValue::I8(5).as_u64(), Some(5));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::U16(9).as_i64(), Some(9));
    assert_eq!(MetaValue::F64(2.0).as_f32(), Some(2.0));
    assert_eq!(MetaValue::U8(1).as_bool(), None);
    let ints = MetaValue::Array(MetaArray::I32(vec![1, 2]));
    assert_eq!(ints.as_i32_array(), Some(&[1, 2][..]));
    assert_eq!(ints.as_f32_array(), None);
    assert_eq!(ints.as_array().map(MetaArray::len), Some(2));
    assert_eq!(ints.type_name(), "array");
    assert_eq!(ints.to_string(), "array<i32>[2]");
    assert!(MetaArray::Bool(vec![]).is_empty());
}

#[test]
fn bad_magic() {
    let mut bytes = GgufWriter::new().to_bytes();
    bytes[0] = b'X';
    assert!(matches!(parse_err(bytes), Error::BadMagic { found } if &found == b"XGUF"));
}

#[test]
fn unsupported_versions() {
    for version in [0, 1, 4, u32::MAX, 3u32.swap_bytes(), 2u32.swap_bytes()] {
        let err = parse_err(GgufWriter::new().set_version(version).to_bytes());
        assert!(
            matches!(err, Error::UnsupportedVersion { version: v } if v == version),
            "{err}"
        );
    }
}

#[test]
fn truncated_at_every_length() {
    let mut writer = GgufWriter::new();
    writer.add_metadata("k", MetaValue::String("value".into()));
    writer
        .add_tensor("t", &[4], TensorType::F32, vec![0u8; 16])
        .unwrap();
    let bytes = writer.to_bytes();
    let data_end = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize + 16;
    // Only the trailing padding after the last tensor may be cut.
    for len in data_end..bytes.len() {
        assert!(GgufFile::from_bytes(bytes[..len].to_vec()).is_ok());
    }
    for len in 0..data_end {
        let err = parse_err(bytes[..len].to_vec());
        assert!(
            matches!(
                err,
                Error::TruncatedFile { .. }
                    | Error::LengthPastEnd { .. }
                    | Error::TensorOutOfBounds { .. }
            ),
            "len {len}: {err}"
        );
    }
    assert!(GgufFile::from_bytes(bytes).is_ok());
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    // n_tensors and n_kv claiming 2^60 entries.
    let err = Raw::header(3, 1 << 60, 0).parse().unwrap_err();
    assert!(
        matches!(err, Error::LengthPastEnd { what: "tensor count", length, .. } if length == 1 << 60)
    );
    let err = Raw::header(3, 0, u64::MAX).parse().unwrap_err();
    assert!(matches!(
        err,
        Error::LengthPastEnd {
            what: "metadata count",
            ..
        }
    ));
    // A string length of 2^60.
    let err = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(meta_type::STRING)
        .u64(1 << 60)
        .zeros(64)
        .parse()
        .unwrap_err();
    assert!(
        matches!(err, Error::LengthPastEnd { ref item, what: "string length", .. } if item.contains("\"k\"")),
        "{err}"
    );
    // An array of 2^60 u64 (and of strings, and of arrays).
    for elem in [
        meta_type::U64,
        meta_type::STRING,
        meta_type::ARRAY,
        meta_type::U8,
    ] {
        let err = Raw::header(3, 0, 1)
            .str(b"arr")
            .u32(meta_type::ARRAY)
            .u32(elem)
            .u64(1 << 60)
            .zeros(64)
            .parse()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::LengthPastEnd {
                    what: "array length",
                    ..
                }
            ),
            "{err}"
        );
    }
    // A key length past the end.
    let err = Raw::header(3, 0, 1)
        .u64(u64::MAX)
        .zeros(16)
        .parse()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::LengthPastEnd {
            what: "key length",
            ..
        }
    ));
}

#[test]
fn duplicate_key_and_tensor() {
    let mut writer = GgufWriter::new();
    writer
        .add_metadata("a", MetaValue::U8(1))
        .add_metadata("a", MetaValue::U8(2));
    assert!(matches!(parse_err(writer.to_bytes()), Error::DuplicateKey { key } if key == "a"));

    let mut writer = GgufWriter::new();
    writer
        .add_tensor("w", &[2], TensorType::F32, vec![0; 8])
        .unwrap();
    writer
        .add_tensor("w", &[2], TensorType::F32, vec![0; 8])
        .unwrap();
    assert!(matches!(parse_err(writer.to_bytes()), Error::DuplicateTensor { name } if name == "w"));
}

#[test]
fn unknown_meta_types() {
    let err = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(13)
        .zeros(16)
        .parse()
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownMetaType { type_id: 13, offset: 33, ref key } if key == "k")
    );
    let err = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(meta_type::ARRAY)
        .u32(0xdead)
        .u64(0)
        .parse()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::UnknownMetaType {
            type_id: 0xdead,
            ..
        }
    ));
}

#[test]
fn invalid_bool_and_utf8() {
    let err = Raw::header(3, 0, 1)
        .str(b"b")
        .u32(meta_type::BOOL)
        .bytes(&[2])
        .parse()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidBool { byte: 2, .. }));

    let err = Raw::header(3, 0, 1)
        .str(b"\xff\xfe")
        .u32(0)
        .bytes(&[0])
        .parse()
        .unwrap_err();
    assert!(
        matches!(err, Error::NonUtf8String { offset: 32, .. }),
        "{err}"
    );

    let err = Raw::header(3, 0, 1)
        .str(b"k")
        .u32(meta_type::STRING)
        .str(b"ok\xc3")
        .parse()
        .unwrap_err();
    assert!(
        matches!(err, Error::NonUtf8String { ref item, .. } if item.contains("\"k\"")),
        "{err}"
    );

    let err = Raw::header(3, 1, 0)
        .str(b"t\x80")
        .u32(1)
        .u64(1)
        .u32(0)
        .u64(0)
        .pad(32)
        .zeros(32)
        .parse()
        .unwrap_err();
    assert!(matches!(err, Error::NonUtf8String { .. }), "{err}");
}

#[test]
fn nesting_too_deep() {
    let mut raw = Raw::header(3, 0, 1).str(b"deep").u32(meta_type::ARRAY);
    for _ in 0..(MAX_ARRAY_NESTING + 5) {
        raw = raw.u32(meta_type::ARRAY).u64(1);
    }
    let err = raw.u32(meta_type::U8).u64(0).parse().unwrap_err();
    assert!(matches!(err, Error::NestingTooDeep { .. }), "{err}");

    // Exactly at the limit is fine.
    let mut inner = MetaArray::U8(vec![1]);
    for _ in 1..MAX_ARRAY_NESTING {
        inner = MetaArray::Array(vec![inner]);
    }
    let mut writer = GgufWriter::new();
    writer.add_metadata("deep", MetaValue::Array(inner.clone()));
    let file = GgufFile::from_bytes(writer.to_bytes()).unwrap();
    assert_eq!(file.get("deep"), Some(&MetaValue::Array(inner)));
}

#[test]
fn bad_alignment() {
    for (value, ok) in [
        (0u32, false),
        (3, false),
        (48, false),
        (1, true),
        (1 << 31, true),
    ] {
        let result = Raw::header(3, 0, 1).kv_u32(ALIGNMENT_KEY, value).parse();
        match result {
            Ok(file) => {
                assert!(ok, "{value}");
                assert_eq!(file.alignment(), u64::from(value));
            }
            Err(err) => {
                assert!(!ok, "{value}: {err}");
                assert!(matches!(err, Error::BadAlignment { value: v } if v == u64::from(value)));
            }
        }
    }
    let err = Raw::header(3, 0, 1)
        .str(ALIGNMENT_KEY.as_bytes())
        .u32(meta_type::STRING)
        .str(b"32")
        .parse()
        .unwrap_err();
    assert!(matches!(err, Error::WrongMetaType { .. }));
    let err = Raw::header(3, 0, 1)
        .str(ALIGNMENT_KEY.as_bytes())
        .u32(meta_type::U64)
        .u64(1 << 40)
        .parse()
        .unwrap_err();
    assert!(matches!(err, Error::BadAlignment { .. }));
}

#[test]
fn tensor_info_errors() {
    let one_tensor = |dims: &[u64], type_id: u32, offset: u64| {
        Raw::header(3, 1, 0)
            .tensor("w", dims, type_id, offset)
            .pad(32)
            .zeros(256)
            .parse()
            .unwrap_err()
    };
    let err = one_tensor(&[1, 1, 1, 1, 1], 0, 0);
    assert!(matches!(err, Error::TooManyDims { n_dims: 5, ref name } if name == "w"));
    let err = Raw::header(3, 1, 0)
        .str(b"w")
        .u32(u32::MAX)
        .zeros(64)
        .parse()
        .unwrap_err();
    assert!(matches!(
        err,
        Error::TooManyDims {
            n_dims: u32::MAX,
            ..
        }
    ));
    let err = one_tensor(&[1 << 32, 1 << 32], 0, 0);
    assert!(matches!(err, Error::TensorSizeOverflow { .. }), "{err}");
    let err = one_tensor(&[u64::MAX / 2], 0, 0); // elements fit, bytes overflow
    assert!(matches!(err, Error::TensorSizeOverflow { .. }), "{err}");
    let err = one_tensor(&[33, 2], 2, 0);
    assert!(
        matches!(
            err,
            Error::RowNotBlockAligned {
                ne0: 33,
                block_len: 32,
                ..
            }
        ),
        "{err}"
    );
    for type_id in [6, 7, 9, 10, 11, 15, 20, 28, 39] {
        let err = one_tensor(&[32], type_id, 0);
        assert!(
            matches!(err, Error::UnsupportedTensorType { type_id: t, ref name } if t == type_id && name == "w"),
            "{err}"
        );
        assert!(err.to_string().contains(ggml_type_name(type_id).unwrap()));
    }
    for type_id in [4, 5, 31, 36, 40, 1000, u32::MAX] {
        let err = one_tensor(&[32], type_id, 0);
        assert!(
            matches!(err, Error::UnknownTensorType { .. }),
            "{type_id}: {err}"
        );
    }
    // Data past the end (256 bytes of data section; 65 f32 = 260 bytes).
    let err = one_tensor(&[65], 0, 0);
    assert!(
        matches!(
            err,
            Error::TensorOutOfBounds {
                n_bytes: 260,
                data_len: 256,
                ..
            }
        ),
        "{err}"
    );
    let err = one_tensor(&[1], 0, u64::MAX - 31);
    assert!(matches!(err, Error::TensorOutOfBounds { .. }), "{err}");
    let err = one_tensor(&[1], 0, 16);
    assert!(
        matches!(
            err,
            Error::MisalignedTensor {
                offset: 16,
                alignment: 32,
                ..
            }
        ),
        "{err}"
    );
    // A truncated tensor info names the tensor.
    let err = Raw::header(3, 1, 0)
        .str(b"w")
        .u32(2)
        .u64(4)
        .parse()
        .unwrap_err();
    assert!(
        matches!(err, Error::TruncatedFile { ref item, what: "dimension", .. } if item.contains("\"w\"")),
        "{err}"
    );
}

#[test]
fn zero_sized_and_scalar_tensors() {
    let file = Raw::header(3, 2, 0)
        .tensor("empty", &[0, 4], 0, 0)
        .tensor("scalar", &[], 0, 0)
        .pad(32)
        .zeros(32)
        .parse()
        .unwrap();
    let empty = file.tensor("empty").unwrap();
    assert_eq!((empty.n_elements, empty.n_bytes), (0, 0));
    assert!(file.tensor_data(empty).is_empty());
    assert_eq!(file.tensor("scalar").unwrap().n_bytes, 4);
}

#[test]
fn missing_data_padding_is_truncation() {
    // One tensor but the file ends right after the tensor infos.
    let err = Raw::header(3, 1, 0)
        .tensor("w", &[0], 0, 0)
        .parse()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TruncatedFile {
                what: "alignment padding",
                ..
            }
        ),
        "{err}"
    );
    // No tensors: an unpadded file is fine.
    assert!(Raw::header(3, 0, 0).parse().is_ok());
}

#[test]
fn tensor_data_of_foreign_info_is_empty() {
    let file = Raw::header(3, 0, 0).parse().unwrap();
    let foreign = TensorInfo {
        name: "x".into(),
        dims: vec![4],
        ty: TensorType::F32,
        offset: u64::MAX,
        n_elements: 4,
        n_bytes: 16,
    };
    assert!(file.tensor_data(&foreign).is_empty());
}

#[test]
fn writer_checks_data_size() {
    let mut writer = GgufWriter::new();
    let err = writer
        .add_tensor("w", &[32], TensorType::Q4_0, vec![0; 17])
        .unwrap_err();
    assert!(matches!(
        err,
        Error::TensorDataSize {
            expected: 18,
            actual: 17,
            ..
        }
    ));
    assert!(writer
        .add_tensor("w", &[31], TensorType::Q8_0, vec![])
        .is_err());
}

#[test]
fn open_and_write_to_path() {
    let dir = std::env::temp_dir().join(format!("coordgen-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let mut writer = GgufWriter::new();
    writer.add_metadata("general.architecture", MetaValue::String("llama".into()));
    writer
        .add_tensor("w", &[32, 2], TensorType::Q8_0, pattern(68, 3))
        .unwrap();
    writer.write_to(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    let w = file.tensor("w").unwrap();
    assert_eq!(file.tensor_data(w), pattern(68, 3).as_slice());
    std::fs::remove_dir_all(&dir).unwrap();

    let err = GgufFile::open(dir.join("absent.gguf")).unwrap_err();
    assert!(matches!(err, Error::Open { .. }));
}

#[test]
fn send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
}

#[test]
fn real_model_if_present() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "note: {} absent, skipping (run tools/fetch-model)",
            path.display()
        );
        return;
    }
    let start = std::time::Instant::now();
    let file = GgufFile::open(&path).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(file.version(), 3);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    let tokens = file.get_string_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    let n_tensors = file.tensors().len();
    assert!((250..=300).contains(&n_tensors), "{n_tensors} tensors");
    let mut by_type = std::collections::BTreeMap::new();
    let mut total = 0u64;
    for t in file.tensors() {
        *by_type.entry(t.ty.name()).or_insert(0) += 1;
        assert_eq!(file.tensor_data(t).len() as u64, t.n_bytes);
        total += t.n_bytes;
    }
    assert!(total <= file.file_len() - file.data_offset());
    eprintln!(
        "real model: {n_tensors} tensors {by_type:?}, {} metadata keys, data at {}, parsed in {elapsed:?}",
        file.metadata().len(),
        file.data_offset()
    );
}
