//! Bad input for the GGUF reader: tens of thousands of truncated and mutated
//! copies of a small, valid file go through `GgufFile::from_bytes`.
//!
//! Each must either parse (and then every tensor's data slice must lie inside
//! the file and have the size its info claims) or fail with an `Error`; a
//! panic anywhere fails the test and names the first panicking case. The
//! per-variant histogram is printed (run with `--nocapture` to see it).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use coordgen::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue, TensorType};

/// SplitMix64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

fn metadata() -> Vec<(&'static str, MetaValue)> {
    vec![
        ("general.architecture", MetaValue::String("llama".into())),
        ("general.name", MetaValue::String("tiny ✓ test".into())),
        ("general.alignment", MetaValue::U32(32)),
        ("llama.block_count", MetaValue::U32(2)),
        ("llama.context_length", MetaValue::U64(2048)),
        ("llama.rope.freq_base", MetaValue::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaValue::F64(1e-5),
        ),
        ("test.i8", MetaValue::I8(-3)),
        ("test.u8", MetaValue::U8(250)),
        ("test.i16", MetaValue::I16(-300)),
        ("test.u16", MetaValue::U16(60000)),
        ("test.i32", MetaValue::I32(-70000)),
        ("test.i64", MetaValue::I64(-1)),
        ("test.bool", MetaValue::Bool(true)),
        (
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(
                ["<s>", "</s>", "a", "b", "ab", "Ġthe", "é", ""]
                    .map(String::from)
                    .to_vec(),
            )),
        ),
        (
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(vec![0.0, -1.0, -2.5, 3.0])),
        ),
        (
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(vec![3, 3, 1, 1, 1, 1, 1, 6])),
        ),
        (
            "test.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U16(vec![1, 2]),
                MetaArray::Bool(vec![false, true]),
                MetaArray::Array(vec![MetaArray::String(vec!["x".into()])]),
            ])),
        ),
    ]
}

/// (name, dims, type) of the sample's tensors.
fn tensor_specs() -> Vec<(&'static str, Vec<u64>, TensorType)> {
    vec![
        ("token_embd.weight", vec![32, 2], TensorType::Q8_0),
        ("blk.0.attn_q.weight", vec![64, 1], TensorType::Q4_0),
        ("blk.0.ffn_up.weight", vec![32, 2], TensorType::Q4_1),
        ("output_norm.weight", vec![8], TensorType::F32),
        ("blk.0.attn_norm.weight", vec![4, 2], TensorType::F16),
        ("rope_freqs.weight", vec![4], TensorType::BF16),
    ]
}

fn writer_with(metadata: &[(&'static str, MetaValue)]) -> GgufWriter {
    let mut writer = GgufWriter::new();
    for (key, value) in metadata {
        writer.add_metadata(*key, value.clone());
    }
    for (i, (name, dims, ty)) in tensor_specs().into_iter().enumerate() {
        let n_elements: u64 = dims.iter().product();
        let n_bytes = n_elements / ty.block_len() * ty.block_bytes();
        let data: Vec<u8> = (0..n_bytes).map(|b| (b as u8) ^ (i as u8 * 17)).collect();
        writer.add_tensor(name, &dims, ty, data).unwrap();
    }
    writer
}

/// Variant name from the Debug form, e.g. `TruncatedFile`.
fn variant_name(err: &coordgen::Error) -> String {
    let debug = format!("{err:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Parses one case; `Ok(label)` for the histogram, `Err(why)` if a parsed
/// file hands out a bad tensor slice.
fn check(bytes: Vec<u8>) -> Result<String, String> {
    match GgufFile::from_bytes(bytes) {
        Err(err) => {
            // Formatting the message must not panic either.
            let _ = err.to_string();
            Ok(variant_name(&err))
        }
        Ok(file) => {
            let whole = file.bytes().as_ptr_range();
            for t in file.tensors() {
                let data = file.tensor_data(t);
                let part = data.as_ptr_range();
                if data.len() as u64 != t.n_bytes
                    || part.start < whole.start
                    || part.end > whole.end
                    || file.data_offset() + t.offset + t.n_bytes > file.file_len()
                {
                    return Err(format!("tensor {:?} data outside the file", t.name));
                }
            }
            Ok("Ok".to_owned())
        }
    }
}

struct Campaign {
    cases: usize,
    histogram: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Campaign {
    fn run(&mut self, label: impl FnOnce() -> String, bytes: Vec<u8>) {
        self.cases += 1;
        match catch_unwind(AssertUnwindSafe(|| check(bytes))) {
            Ok(Ok(outcome)) => *self.histogram.entry(outcome).or_default() += 1,
            Ok(Err(why)) => self.failures.push(format!("{}: {why}", label())),
            Err(_) => self.failures.push(format!("{}: panicked", label())),
        }
    }
}

#[test]
fn gguf_reader_survives_malformed_input() {
    let start = std::time::Instant::now();
    let base = writer_with(&metadata()).to_bytes();
    let parsed = GgufFile::from_bytes(base.clone()).expect("the sample file parses");
    assert_eq!(parsed.tensors().len(), tensor_specs().len());
    let header_len = parsed.data_offset() as usize;
    let file_len = base.len() as u64;
    drop(parsed);

    // Silence the default hook's backtrace spam; panics are recorded instead.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));

    let mut campaign = Campaign {
        cases: 0,
        histogram: BTreeMap::new(),
        failures: Vec::new(),
    };
    let mut rng = Rng(0x00C0_FFEE_D00D_2025);

    // 1. Truncation at every length.
    for len in 0..base.len() {
        campaign.run(|| format!("truncate to {len}"), base[..len].to_vec());
    }

    // 2. Extreme u64 and u32 values written at every header offset (8-byte
    //    aligned and not: GGUF fields are packed, not aligned).
    let extremes_u64 = [
        0,
        1,
        u64::MAX,
        u64::MAX - 1,
        1 << 31,
        1 << 32,
        1 << 60,
        1 << 63,
        file_len,
        file_len + 1,
    ];
    for offset in 0..header_len.saturating_sub(7) {
        for &value in &extremes_u64 {
            let mut bytes = base.clone();
            bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
            campaign.run(|| format!("u64 {value:#x} at {offset}"), bytes);
        }
    }
    // Small u32s hit type ids, versions, n_dims and alignments.
    let small_u32s = [
        0u32,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        10,
        12,
        13,
        30,
        64,
        255,
        u32::MAX,
    ];
    for offset in 0..header_len.saturating_sub(3) {
        for &value in &small_u32s {
            let mut bytes = base.clone();
            bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            campaign.run(|| format!("u32 {value} at {offset}"), bytes);
        }
    }

    // 3. Random byte flips, mostly in the header.
    for case in 0..8000 {
        let mut bytes = base.clone();
        let n_flips = 1 + rng.below(4);
        for _ in 0..n_flips {
            let region = if rng.below(5) == 0 {
                bytes.len()
            } else {
                header_len
            };
            let at = rng.below(region);
            bytes[at] = match rng.below(3) {
                0 => bytes[at] ^ (1 << rng.below(8)),
                1 => rng.next_u64() as u8,
                _ => [0x00, 0xff, 0x80, 0x7f][rng.below(4)],
            };
        }
        campaign.run(|| format!("random flips #{case}"), bytes);
    }

    // 4. Random structural edits: delete, duplicate or insert a byte range.
    for case in 0..3000 {
        let mut bytes = base.clone();
        let at = rng.below(header_len);
        let len = 1 + rng.below(24);
        let end = (at + len).min(bytes.len());
        match rng.below(3) {
            0 => {
                bytes.drain(at..end);
            }
            1 => {
                let copy = bytes[at..end].to_vec();
                bytes.splice(at..at, copy);
            }
            _ => {
                let noise: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                bytes.splice(at..at, noise);
            }
        }
        campaign.run(|| format!("structural edit #{case}"), bytes);
    }

    // 5. Each metadata key inserted a second time (at the end and right
    //    after itself), and each tensor name duplicated.
    let entries = metadata();
    for i in 0..entries.len() {
        let mut at_end = entries.clone();
        at_end.push(entries[i].clone());
        let mut adjacent = entries.clone();
        adjacent.insert(i + 1, (entries[i].0, MetaValue::U8(0)));
        for (how, list) in [("at end", at_end), ("adjacent", adjacent)] {
            let bytes = writer_with(&list).to_bytes();
            let outcome = check(bytes.clone());
            assert_eq!(
                outcome.as_deref(),
                Ok("DuplicateKey"),
                "duplicate {} {how}",
                entries[i].0
            );
            campaign.run(|| format!("duplicate key {} {how}", entries[i].0), bytes);
        }
    }
    for (name, dims, ty) in tensor_specs() {
        let mut writer = writer_with(&metadata());
        let n_bytes = dims.iter().product::<u64>() / ty.block_len() * ty.block_bytes();
        writer
            .add_tensor(name, &dims, ty, vec![0u8; n_bytes as usize])
            .unwrap();
        let bytes = writer.to_bytes();
        assert_eq!(check(bytes.clone()).as_deref(), Ok("DuplicateTensor"));
        campaign.run(|| format!("duplicate tensor {name}"), bytes);
    }

    std::panic::set_hook(default_hook);
    let elapsed = start.elapsed();

    println!(
        "GGUF malformed-input campaign: {} cases over a {}-byte file ({} header bytes) in {elapsed:?}",
        campaign.cases,
        base.len(),
        header_len
    );
    for (outcome, count) in &campaign.histogram {
        println!("  {outcome:<24} {count}");
    }
    assert!(
        campaign.failures.is_empty(),
        "{} failing cases, first: {}",
        campaign.failures.len(),
        campaign.failures[0]
    );
    assert!(campaign.cases >= 10_000, "only {} cases", campaign.cases);
    // The campaign must actually reach the interesting checks.
    for expected in [
        "Ok",
        "BadMagic",
        "UnsupportedVersion",
        "TruncatedFile",
        "LengthPastEnd",
        "DuplicateKey",
        "DuplicateTensor",
        "UnknownMetaType",
        "NonUtf8String",
        "TooManyDims",
        "UnsupportedTensorType",
        "UnknownTensorType",
        "TensorOutOfBounds",
        "MisalignedTensor",
        "BadAlignment",
    ] {
        assert!(
            campaign.histogram.contains_key(expected),
            "no case produced {expected}"
        );
    }
}
