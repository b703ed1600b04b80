//! Graphs on Qualcomm's real HTP library (its x86-64 simulator): build,
//! validate, finalize, execute, and the context-binary round trip.

mod common;

use coordgen_qnn::{
    Context, DataType, Error, Graph, GraphBuilder, Library, Param, Role, Runtime, Soc,
};
use half::f16;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A deterministic pseudo-random value in [-1, 1).
fn noise(i: usize, seed: u64) -> f32 {
    let mut x =
        (i as u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// f32 in → fp16 → FullyConnected with fp16 weights → f32 out.
fn fc_graph(
    context: &std::sync::Arc<Context>,
    name: &str,
    m: usize,
    k: usize,
    n: usize,
    w: &[f32],
) -> Graph {
    let mut g = GraphBuilder::new(context, name).unwrap();
    let x = g
        .tensor("x", Role::Input, DataType::F32, &[m, k], None)
        .unwrap();
    let x16 = g
        .tensor("x16", Role::Native, DataType::F16, &[m, k], None)
        .unwrap();
    let w16 = g
        .tensor(
            "w",
            Role::Static,
            DataType::F16,
            &[n, k],
            Some(&f16_bytes(w)),
        )
        .unwrap();
    let y16 = g
        .tensor("y16", Role::Native, DataType::F16, &[m, n], None)
        .unwrap();
    let y = g
        .tensor("y", Role::Output, DataType::F32, &[m, n], None)
        .unwrap();
    g.node("Cast", &[x], &[x16], &[]).unwrap();
    g.node("FullyConnected", &[x16, w16], &[y16], &[]).unwrap();
    g.node("Cast", &[y16], &[y], &[]).unwrap();
    g.finalize().unwrap()
}

#[test]
fn a_cast_fp16_fully_connected_graph_matches_f64_and_survives_a_binary_round_trip() {
    let Some(folder) = common::qnn_folder() else {
        return;
    };
    let library = Library::load(&folder).unwrap();
    let runtime = Runtime::new(&library, Soc::default()).unwrap();
    let context = Context::new(&runtime).unwrap();
    let (m, k, n) = (4, 64, 32);
    let w: Vec<f32> = (0..n * k).map(|i| noise(i, 1) * 0.2).collect();
    let x: Vec<f32> = (0..m * k).map(|i| noise(i, 2)).collect();
    let mut graph = fc_graph(&context, "fc", m, k, n, &w);
    let mut y = vec![0u8; m * n * 4];
    graph.execute(&[&f32_bytes(&x)], &mut [&mut y]).unwrap();
    let y = floats(&y);
    let mut worst = 0f64;
    let mut scale = 0f64;
    for r in 0..m {
        for c in 0..n {
            let want: f64 = (0..k)
                .map(|i| x[r * k + i] as f64 * f16::from_f32(w[c * k + i]).to_f64())
                .sum();
            worst = worst.max((want - y[r * n + c] as f64).abs());
            scale = scale.max(want.abs());
        }
    }
    assert!(
        worst <= 4e-3 * scale.max(1.0),
        "max error {worst} (scale {scale})"
    );

    // Serialize, load in a new context, find the graph by name and ids.
    let binary = context.binary().unwrap();
    assert!(binary.len() > n * k * 2, "{} bytes", binary.len());
    let (inputs, outputs) = (graph.inputs().to_vec(), graph.outputs().to_vec());
    drop(graph);
    drop(context);
    let loaded = Context::from_binary(&runtime, &binary).unwrap();
    let mut again = Graph::retrieve(&loaded, "fc", inputs, outputs).unwrap();
    let mut y2 = vec![0u8; m * n * 4];
    again.execute(&[&f32_bytes(&x)], &mut [&mut y2]).unwrap();
    assert_eq!(floats(&y2), y);
}

#[test]
fn bad_graphs_are_typed_errors_with_the_library_message() {
    let Some(folder) = common::qnn_folder() else {
        return;
    };
    let library = Library::load(&folder).unwrap();
    let runtime = Runtime::new(&library, Soc::default()).unwrap();
    let context = Context::new(&runtime).unwrap();
    let mut g = GraphBuilder::new(&context, "bad").unwrap();
    let a = g
        .tensor("a", Role::Input, DataType::F16, &[2, 8], None)
        .unwrap();
    let b = g
        .tensor("b", Role::Output, DataType::F16, &[3, 5], None)
        .unwrap();
    // An op that does not exist.
    let err = g.node("NoSuchOp", &[a], &[b], &[]).unwrap_err();
    eprintln!("{err}");
    assert!(
        matches!(&err, Error::Call { call: "backendValidateOpConfig", message, .. } if !message.is_empty()),
        "{err}"
    );
    // Shapes that do not add up.
    let err = g
        .node(
            "ElementWiseAdd",
            &[a, a],
            &[b],
            &[Param::Scalar("nothing", coordgen_qnn::Scalar::U32(0))],
        )
        .unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, Error::Call { .. }), "{err}");
    // Static data of the wrong size never reaches the library.
    let err = g
        .tensor("w", Role::Static, DataType::F16, &[4], Some(&[0u8; 6]))
        .unwrap_err();
    assert!(matches!(err, Error::BadTensor { .. }), "{err}");
    // A loaded graph executed with a wrong buffer size.
    let mut fc = fc_graph(&context, "fc", 1, 8, 8, &[0.5; 64]);
    let mut y = vec![0u8; 8];
    let err = fc.execute(&[&[0u8; 32]], &mut [&mut y]).unwrap_err();
    assert!(matches!(err, Error::BadTensor { .. }), "{err}");
    // A binary that is not one.
    let err = Context::from_binary(&runtime, b"not a context binary")
        .err()
        .unwrap();
    eprintln!("{err}");
    assert!(
        matches!(
            err,
            Error::Call {
                call: "contextCreateFromBinary",
                ..
            }
        ),
        "{err}"
    );
}
