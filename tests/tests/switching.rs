//! Graph switching (progressive, naive, both resident) changes when blocks
//! move from their prefill graph to their verify graph, never the numbers:
//! on the CPU the same logits come out wherever the switch starts.

use coordgen::schedule::{Event, GraphKind};
use coordgen::{Engine, EngineOptions, Switching};
use coordgen_graph::DType;
use coordgen_tests::synthetic::{tiny_weights, write_tiny_gguf};

fn engine(dir: &std::path::Path) -> Engine {
    let path = dir.join("tiny.gguf");
    write_tiny_gguf(&tiny_weights(DType::Q8_0, 33), &path);
    let options = EngineOptions {
        threads: Some(1),
        context_length: 64,
        prefill_widths: vec![8],
        verify_widths: vec![1, 4],
        // Two blocks of one layer each.
        layers_per_block: 1,
        prefault: false,
        switching: Switching::BothResident,
        ..EngineOptions::default()
    };
    Engine::load(&path, options).unwrap()
}

/// Teacher-forced logits of a 20-token prompt (chunks of 8, 8 and 4),
/// then of three decode steps.
fn run(engine: &Engine) -> Vec<f32> {
    let prompt: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 96).collect();
    let mut session = engine.session();
    let mut all = session.append_all_logits(&prompt).unwrap();
    for t in [5u32, 60, 17] {
        session.append(&[t]).unwrap();
        all.extend_from_slice(session.logits());
    }
    all
}

#[test]
fn the_logits_do_not_depend_on_where_blocks_switch() {
    let dir = std::env::temp_dir().join(format!("coordgen-switching-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let engine = engine(&dir);
    let want = run(&engine);
    let (chunks, blocks) = (3, 2);
    for start in 0..=chunks * blocks {
        engine
            .set_switching(Switching::Progressive, Some(start))
            .unwrap();
        engine.start_timeline().unwrap();
        let got = run(&engine);
        let events = engine.take_timeline().unwrap().events;
        assert_eq!(got, want, "switch from boundary {start}");
        // Blocks that switched before the end ran sub-chunks on G2.
        let g2_runs = events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Compute {
                        graph: GraphKind::G2,
                        ..
                    }
                )
            })
            .count();
        let computes = events
            .iter()
            .filter(|e| matches!(e, Event::Compute { .. }))
            .count();
        assert_eq!(computes, chunks * blocks, "one run per chunk and block");
        if start < chunks * blocks - 1 {
            assert!(g2_runs > 0, "start {start}: {events:?}");
        }
        // Decode steps ran on G2 as passes.
        let passes = events
            .iter()
            .filter(|e| matches!(e, Event::Pass { .. }))
            .count();
        assert_eq!(passes, 3, "start {start}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
