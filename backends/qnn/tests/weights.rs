//! Weight conversion: per-channel integer scales, exact fp16 values, and
//! typed errors for bad sizes.

use coordgen_graph::{DType, WeightDesc};
use coordgen_qnn::weights::{convert_matrix, dequantize, WeightFormat};
use coordgen_qnn::{DataType, Error};

fn desc(dtype: DType, shape: &[usize]) -> WeightDesc {
    WeightDesc {
        dtype,
        shape: shape.to_vec(),
    }
}

#[test]
fn per_channel_integers_keep_each_rows_scale() {
    let values: Vec<f32> = vec![0.5, -1.0, 0.25, 0.0, 8.0, -4.0, 2.0, 1.0];
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let d = desc(DType::F32, &[2, 4]);
    let c = convert_matrix("w", &d, &bytes, WeightFormat::Int8).unwrap();
    let DataType::SFixed8PerAxis {
        axis,
        bitwidth,
        scales,
    } = &c.data_type
    else {
        panic!("{:?}", c.data_type)
    };
    assert_eq!((*axis, *bitwidth), (0, 8));
    assert_eq!(scales, &[1.0 / 127.0, 8.0 / 127.0]);
    assert_eq!(c.bytes[1] as i8, -127);
    assert_eq!(c.bytes[4] as i8, 127);
    assert!(c.report.relative_rms < 1e-2, "{:?}", c.report);

    let c4 = convert_matrix("w", &d, &bytes, WeightFormat::Int4).unwrap();
    assert!(c4.bytes.iter().all(|&b| (-7..=7).contains(&(b as i8))));
    assert!(c4.report.relative_rms > c.report.relative_rms);

    let c16 = convert_matrix("w", &d, &bytes, WeightFormat::F16).unwrap();
    assert_eq!(
        c16.report.max_abs_error, 0.0,
        "these values are exact in fp16"
    );
    assert_eq!(c16.data_type, DataType::F16);
}

#[test]
fn a_weight_of_the_wrong_size_is_an_error() {
    let d = desc(DType::Q8_0, &[1, 32]);
    assert!(matches!(
        dequantize("w", &d, &[0u8; 33]),
        Err(Error::BadWeight { .. })
    ));
}
