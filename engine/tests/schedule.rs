//! The graph-switching plans on synthetic cost models.

use coordgen::schedule::*;

fn uniform(
    n: usize,
    load: f64,
    g1: f64,
    g2: f64,
    chunks: &[usize],
    g1w: usize,
    g2w: usize,
) -> ScheduleInput {
    ScheduleInput {
        blocks: vec![
            BlockCosts {
                load_g2_ms: load,
                g1_ms: g1,
                g2_ms: g2,
            };
            n
        ],
        chunk_rows: chunks.to_vec(),
        g1_width: g1w,
        g2_width: g2w,
    }
}

/// Every schedule's invariants: loads serialized, a block never
/// computed while its load runs, every block switched (last first), and
/// compute intervals back to back with stalls.
fn check(input: &ScheduleInput, s: &Schedule) {
    let n = input.blocks.len();
    let loads: Vec<(usize, f64, f64)> = s
        .events
        .iter()
        .filter_map(|e| match *e {
            Event::Load {
                block,
                start_ms,
                end_ms,
            } => Some((block, start_ms, end_ms)),
            _ => None,
        })
        .collect();
    if s.name != "both resident" {
        let mut want: Vec<usize> = (0..n).rev().collect();
        assert_eq!(s.switch_order, want, "{}", s.name);
        want.sort_unstable();
        let mut got: Vec<usize> = loads.iter().map(|l| l.0).collect();
        got.sort_unstable();
        assert_eq!(got, want, "one load per block");
    }
    for w in loads.windows(2) {
        assert!(w[1].1 >= w[0].2 - 1e-9, "loads overlap: {w:?}");
    }
    let mut t = 0.0;
    for e in &s.events {
        if let Event::Compute {
            block,
            start_ms,
            end_ms,
            ..
        } = *e
        {
            assert!(
                (start_ms - t).abs() < 1e-9 || start_ms > t,
                "compute out of order"
            );
            for &(b, ls, le) in &loads {
                if b == block {
                    assert!(
                        end_ms <= ls + 1e-9 || start_ms >= le - 1e-9,
                        "block {b} computed during its load"
                    );
                }
            }
            t = end_ms;
        }
    }
    assert!(s.ready_ms >= s.prefill_end_ms - 1e-9);
    let stalls: f64 = s
        .events
        .iter()
        .map(|e| match *e {
            Event::Stall {
                start_ms, end_ms, ..
            } => end_ms - start_ms,
            _ => 0.0,
        })
        .sum();
    assert!(
        (stalls - s.stall_ms).abs() < 1e-6,
        "{stalls} vs {}",
        s.stall_ms
    );
}

#[test]
fn the_papers_worked_example_hides_every_load() {
    // N = 6, two chunks of 256 rows, G2 a quarter as wide; loading one
    // block overlaps two blocks of compute.
    let input = uniform(6, 2.0, 1.0, 0.3, &[256, 256], 256, 64);
    let naive = naive(&input);
    let p = progressive(&input);
    check(&input, &naive);
    check(&input, &p);
    assert_eq!(naive.stall_ms, 12.0);
    assert_eq!(p.stall_ms, 0.0, "{p:#?}");
    assert_eq!(p.peak_resident_graphs, 6);
    // The first load overlaps the first two blocks of a chunk (as in
    // the paper's figure: P1, P2 compute while P6 loads).
    let first_load = p
        .events
        .iter()
        .find(|e| matches!(e, Event::Load { .. }))
        .unwrap();
    let covered: Vec<usize> = p
        .events
        .iter()
        .filter_map(|e| match *e {
            Event::Compute {
                block,
                start_ms,
                end_ms,
                ..
            } if start_ms >= first_load.start_ms() - 1e-9
                && end_ms <= first_load.end_ms() + 1e-9 =>
            {
                Some(block)
            }
            _ => None,
        })
        .collect();
    assert_eq!(covered.len(), 2, "{covered:?}");
    assert!(p.ready_ms < naive.ready_ms);
    // Blocks already on G2 run the rest of their prefill as sub-chunks.
    assert!(p.events.iter().any(|e| matches!(
        e,
        Event::Compute {
            graph: GraphKind::G2,
            runs: 4,
            ..
        }
    )));
}

#[test]
fn prefill_too_short_to_hide_the_loads_stalls_as_little_as_it_can() {
    // One short chunk: 6 ms of compute against 30 ms of loads.
    let input = uniform(6, 5.0, 1.0, 0.5, &[100], 128, 32);
    let naive = naive(&input);
    let p = progressive(&input);
    check(&input, &p);
    assert_eq!(naive.stall_ms, 30.0);
    assert!(p.stall_ms > 0.0, "cannot hide 30 ms under 6 ms");
    // Some loads hide under the other blocks' compute, so decoding is
    // ready sooner than after the naive switch.
    assert!(
        p.ready_ms < naive.ready_ms,
        "{} vs {}",
        p.ready_ms,
        naive.ready_ms
    );
    assert!(p.ready_ms >= 30.0, "loads alone take 30 ms");
}

#[test]
fn a_single_block_cannot_hide_its_own_load() {
    let input = uniform(1, 4.0, 2.0, 1.0, &[128, 128, 64], 128, 32);
    let naive = naive(&input);
    let p = progressive(&input);
    check(&input, &p);
    // Nothing else computes while the only block loads.
    assert_eq!(p.stall_ms, naive.stall_ms);
    assert_eq!(p.ready_ms, naive.ready_ms);
}

#[test]
fn loads_longer_than_all_compute_still_overlap_what_they_can() {
    let input = uniform(4, 10.0, 1.0, 0.4, &[64, 64], 64, 16);
    let naive = naive(&input);
    let p = progressive(&input);
    check(&input, &p);
    assert_eq!(naive.stall_ms, 40.0);
    // All compute is 8 ms: the loads (40 ms serialized) set the pace.
    assert!(p.ready_ms >= 40.0 - 1e-9);
    assert!(p.ready_ms < naive.ready_ms);
    assert!(p.stall_ms < naive.stall_ms);
}

#[test]
fn keeping_both_graphs_resident_never_stalls_but_doubles_the_graphs() {
    let input = uniform(6, 2.0, 1.0, 0.3, &[256, 256], 256, 64);
    let s = both_resident(&input);
    check(&input, &s);
    assert_eq!(s.stall_ms, 0.0);
    assert_eq!(s.ready_ms, s.prefill_end_ms);
    assert_eq!(s.peak_resident_graphs, 12);
}

#[test]
fn the_timeline_draws_every_event() {
    let input = uniform(3, 2.0, 1.0, 0.3, &[64, 64], 64, 16);
    let (a, b) = (naive(&input), progressive(&input));
    let svg = timeline_svg("test & <timeline>", &[&a, &b]);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("test &amp; &lt;timeline&gt;"));
    let rects = svg.matches("<rect").count();
    assert_eq!(rects, 1 + a.events.len() + b.events.len());
}
