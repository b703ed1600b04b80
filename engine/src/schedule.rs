//! Progressive graph scheduling: switching a model's blocks of layers from
//! the wide prefill graph (G1) to the narrow verify graph (G2) while prefill
//! still runs, so that the switch's load time hides under compute.
//!
//! On an NPU each static graph carries its own copy of the weights and a
//! block keeps one graph resident. Switching every block after prefill (the
//! naive switch) stalls generation for the sum of the loads. The paper's
//! schedule (`paper-digest.md` §2.1) switches blocks from last to first
//! during the last prefill chunk(s): a block's G2 loads on a worker while
//! the compute thread runs *other* blocks, and a block already on G2 runs its
//! remaining prefill rows as repeated G2 sub-chunks.
//!
//! This module plans such schedules on a cost model and lays them out on a
//! timeline (compute lane and load lane): [`naive`], [`progressive`] and
//! [`both_resident`]. Loads are serialized (one in flight), and a block is
//! never computed while its own load runs.

use serde::{Deserialize, Serialize};

/// Measured (or synthetic) costs of one block of layers, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockCosts {
    /// Making the block's G2 resident (context-binary load or finalize).
    pub load_g2_ms: f64,
    /// One G1 run (a whole prefill chunk).
    pub g1_ms: f64,
    /// One G2 run (a sub-chunk of the G2 width).
    pub g2_ms: f64,
}

/// What a schedule is planned for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleInput {
    /// Per block, first to last.
    pub blocks: Vec<BlockCosts>,
    /// Rows of each prefill chunk, in order (each at most `g1_width`).
    pub chunk_rows: Vec<usize>,
    pub g1_width: usize,
    pub g2_width: usize,
}

/// The graph a block runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GraphKind {
    G1,
    G2,
}

/// One interval of a timeline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Block `block` runs prefill chunk `chunk` on `graph` (`runs` calls:
    /// one for G1, one per G2 sub-chunk).
    Compute {
        chunk: usize,
        block: usize,
        graph: GraphKind,
        runs: usize,
        start_ms: f64,
        end_ms: f64,
    },
    /// Block `block`'s G2 loads (on the load lane).
    Load {
        block: usize,
        start_ms: f64,
        end_ms: f64,
    },
    /// The compute lane waits for `block`'s load: inside prefill (the
    /// block is due on G2), or after it (decoding needs every block on G2).
    Stall {
        block: usize,
        start_ms: f64,
        end_ms: f64,
    },
    /// Before a prefill, a block that an earlier request left on G2 gets
    /// its G1 back (the compute lane waits).
    Restore {
        block: usize,
        start_ms: f64,
        end_ms: f64,
    },
    /// A decode or verification pass of `rows` rows after prefill.
    Pass {
        rows: usize,
        start_ms: f64,
        end_ms: f64,
    },
}

impl Event {
    pub fn start_ms(&self) -> f64 {
        match *self {
            Event::Compute { start_ms, .. }
            | Event::Load { start_ms, .. }
            | Event::Stall { start_ms, .. }
            | Event::Restore { start_ms, .. }
            | Event::Pass { start_ms, .. } => start_ms,
        }
    }

    pub fn end_ms(&self) -> f64 {
        match *self {
            Event::Compute { end_ms, .. }
            | Event::Load { end_ms, .. }
            | Event::Stall { end_ms, .. }
            | Event::Restore { end_ms, .. }
            | Event::Pass { end_ms, .. } => end_ms,
        }
    }
}

/// A planned schedule and what it costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    pub name: &'static str,
    pub events: Vec<Event>,
    /// When the last prefill compute ends.
    pub prefill_end_ms: f64,
    /// When decoding can start: prefill done and every block on G2.
    pub ready_ms: f64,
    /// Time the compute lane waits for loads, in prefill and after it.
    pub stall_ms: f64,
    /// Extra compute from running prefill rows as G2 sub-chunks.
    pub g2_overhead_ms: f64,
    /// Most graphs resident at once, over all blocks.
    pub peak_resident_graphs: usize,
    /// Blocks in the order they switched to G2.
    pub switch_order: Vec<usize>,
}

/// G2 runs a chunk of `rows` takes.
fn g2_runs(rows: usize, g2_width: usize) -> usize {
    rows.div_ceil(g2_width.max(1))
}

/// Prefill on G1 throughout; then every block's G2 loads, one after
/// another, while decoding waits.
pub fn naive(input: &ScheduleInput) -> Schedule {
    let mut events = Vec::new();
    let mut t = 0.0;
    for (c, _) in input.chunk_rows.iter().enumerate() {
        for (b, costs) in input.blocks.iter().enumerate() {
            events.push(Event::Compute {
                chunk: c,
                block: b,
                graph: GraphKind::G1,
                runs: 1,
                start_ms: t,
                end_ms: t + costs.g1_ms,
            });
            t += costs.g1_ms;
        }
    }
    let prefill_end = t;
    let mut order = Vec::new();
    for b in (0..input.blocks.len()).rev() {
        let load = input.blocks[b].load_g2_ms;
        events.push(Event::Load {
            block: b,
            start_ms: t,
            end_ms: t + load,
        });
        events.push(Event::Stall {
            block: b,
            start_ms: t,
            end_ms: t + load,
        });
        t += load;
        order.push(b);
    }
    Schedule {
        name: "naive",
        events,
        prefill_end_ms: prefill_end,
        ready_ms: t,
        stall_ms: t - prefill_end,
        g2_overhead_ms: 0.0,
        peak_resident_graphs: input.blocks.len(),
        switch_order: order,
    }
}

/// Both graphs stay resident: G2 loaded before the request (twice the
/// memory), so nothing is switched and nothing stalls.
pub fn both_resident(input: &ScheduleInput) -> Schedule {
    let mut s = naive(input);
    s.events.retain(|e| matches!(e, Event::Compute { .. }));
    s.name = "both resident";
    s.ready_ms = s.prefill_end_ms;
    s.stall_ms = 0.0;
    s.peak_resident_graphs = 2 * input.blocks.len();
    s.switch_order.clear();
    s
}

/// The paper's progressive schedule: blocks switch from last to first,
/// each load starting at the first block boundary after the previous one
/// ended, from the best starting point (the one that makes decoding ready
/// soonest; the latest such point on ties, as G2 sub-chunks cost more).
pub fn progressive(input: &ScheduleInput) -> Schedule {
    let positions = input.chunk_rows.len() * input.blocks.len();
    let mut best: Option<Schedule> = None;
    // From the latest start back, so ties keep the later start.
    for start in (0..=positions).rev() {
        let s = simulate(input, start);
        let better = best.as_ref().is_none_or(|b| s.ready_ms < b.ready_ms - 1e-9);
        if better {
            best = Some(s);
        }
    }
    // `positions` is never negative, so the loop ran at least once.
    best.unwrap_or_else(|| simulate(input, positions))
}

/// The schedule whose first load starts at block boundary `start` (chunk
/// `start / N`, block `start % N`; `C·N` is after prefill).
fn simulate(input: &ScheduleInput, start: usize) -> Schedule {
    let n = input.blocks.len();
    let mut on_g2 = vec![false; n];
    let mut next: Option<usize> = n.checked_sub(1);
    let mut in_flight: Option<(usize, f64)> = None;
    let mut events = Vec::new();
    let mut order = Vec::new();
    let mut t = 0.0;
    let mut stall = 0.0;
    let mut overhead = 0.0;

    // Finishes the load in flight if it ended by `now`.
    let settle = |now: f64,
                  in_flight: &mut Option<(usize, f64)>,
                  next: &mut Option<usize>,
                  on_g2: &mut Vec<bool>,
                  order: &mut Vec<usize>| {
        if let Some((b, end)) = *in_flight {
            if end <= now + 1e-12 {
                on_g2[b] = true;
                order.push(b);
                *in_flight = None;
                *next = b.checked_sub(1);
            }
        }
    };

    // Starts block `j`'s load at `now`: its block and when it ends.
    let start_load = |j: usize, now: f64, events: &mut Vec<Event>| {
        let end = now + input.blocks[j].load_g2_ms;
        events.push(Event::Load {
            block: j,
            start_ms: now,
            end_ms: end,
        });
        (j, end)
    };

    let boundaries = input.chunk_rows.len() * n;
    for position in 0..=boundaries {
        settle(t, &mut in_flight, &mut next, &mut on_g2, &mut order);
        // A block about to run waits for its own load: start it after.
        let due = (position < boundaries).then_some(position % n);
        if position >= start && in_flight.is_none() && next != due {
            if let Some(j) = next {
                // G1 goes first: one resident graph per block.
                in_flight = Some(start_load(j, t, &mut events));
            }
        }
        if position == boundaries {
            break;
        }
        let (c, b) = (position / n, position % n);
        // A block under load cannot run: wait for its G2.
        if let Some((loading, end)) = in_flight {
            if loading == b {
                events.push(Event::Stall {
                    block: b,
                    start_ms: t,
                    end_ms: end,
                });
                stall += end - t;
                t = end;
                settle(t, &mut in_flight, &mut next, &mut on_g2, &mut order);
            }
        }
        let costs = input.blocks[b];
        let (graph, runs, time) = if on_g2[b] {
            let runs = g2_runs(input.chunk_rows[c], input.g2_width);
            overhead += runs as f64 * costs.g2_ms - costs.g1_ms;
            (GraphKind::G2, runs, runs as f64 * costs.g2_ms)
        } else {
            (GraphKind::G1, 1, costs.g1_ms)
        };
        events.push(Event::Compute {
            chunk: c,
            block: b,
            graph,
            runs,
            start_ms: t,
            end_ms: t + time,
        });
        t += time;
    }
    let prefill_end = t;
    // After prefill: the remaining loads, one after another.
    loop {
        if let Some((b, end)) = in_flight {
            events.push(Event::Stall {
                block: b,
                start_ms: t,
                end_ms: end.max(t),
            });
            stall += (end - t).max(0.0);
            t = t.max(end);
            settle(t, &mut in_flight, &mut next, &mut on_g2, &mut order);
        }
        match next {
            Some(j) if in_flight.is_none() && !on_g2[j] => {
                in_flight = Some(start_load(j, t, &mut events));
            }
            _ => break,
        }
    }
    Schedule {
        name: "progressive",
        events,
        prefill_end_ms: prefill_end,
        ready_ms: t,
        stall_ms: stall,
        g2_overhead_ms: overhead,
        // A block's G1 is freed when its G2 load starts.
        peak_resident_graphs: n,
        switch_order: order,
    }
}

/// A recorded timeline as a [`Schedule`]: prefill ends with the last
/// block run, decoding is ready once the last load is done too.
pub fn from_events(name: &'static str, events: Vec<Event>) -> Schedule {
    let prefill_end = events
        .iter()
        .filter(|e| matches!(e, Event::Compute { .. }))
        .map(Event::end_ms)
        .fold(0.0, f64::max);
    let loads_end = events
        .iter()
        .filter(|e| matches!(e, Event::Load { .. } | Event::Stall { .. }))
        .map(Event::end_ms)
        .fold(0.0, f64::max);
    let stall = events
        .iter()
        .map(|e| match *e {
            Event::Stall {
                start_ms, end_ms, ..
            } => end_ms - start_ms,
            _ => 0.0,
        })
        .sum();
    let order = events
        .iter()
        .filter_map(|e| match *e {
            Event::Load { block, .. } => Some(block),
            _ => None,
        })
        .collect();
    let end = events.iter().map(Event::end_ms).fold(0.0, f64::max);
    Schedule {
        name,
        events,
        prefill_end_ms: prefill_end,
        ready_ms: prefill_end.max(loads_end).max(end),
        stall_ms: stall,
        g2_overhead_ms: 0.0,
        peak_resident_graphs: 0,
        switch_order: order,
    }
}

/// Draws schedules one above the other as a Gantt chart: per schedule, a
/// compute lane (G1 blue, G2 green, stalls red) and a load lane (orange).
pub fn timeline_svg(title: &str, schedules: &[&Schedule]) -> String {
    let end = schedules
        .iter()
        .map(|s| s.ready_ms)
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, width, lane, gap) = (150.0, 900.0, 26.0, 30.0);
    let x = |ms: f64| left + ms / end * width;
    let height = 60.0 + schedules.len() as f64 * (2.0 * lane + gap) + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">{title}</text>\n",
        w = left + width + 30.0,
        title = escape(title),
    );
    for (k, s) in schedules.iter().enumerate() {
        let top = 45.0 + k as f64 * (2.0 * lane + gap);
        svg += &format!(
            "<text x=\"10\" y=\"{:.1}\">{} compute</text>\n<text x=\"10\" y=\"{:.1}\">{} load</text>\n",
            top + 17.0,
            escape(s.name),
            top + lane + 17.0,
            escape(s.name)
        );
        for e in &s.events {
            let (row, fill, label) = match *e {
                Event::Compute {
                    block,
                    graph,
                    chunk,
                    ..
                } => (
                    0.0,
                    if graph == GraphKind::G1 {
                        "#4c78a8"
                    } else {
                        "#54a24b"
                    },
                    format!("c{chunk} b{block}"),
                ),
                Event::Stall { block, .. } => (0.0, "#e45756", format!("stall b{block}")),
                Event::Pass { rows, .. } => (0.0, "#b279a2", format!("pass of {rows} rows")),
                Event::Restore { block, .. } => (0.0, "#9d9d9d", format!("G1 back for b{block}")),
                Event::Load { block, .. } => (lane, "#f58518", format!("load b{block}")),
            };
            let (x0, x1) = (x(e.start_ms()), x(e.end_ms()));
            svg += &format!(
                "<rect x=\"{x0:.2}\" y=\"{:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{fill}\" stroke=\"white\" stroke-width=\"0.5\"><title>{} {:.1}-{:.1} ms</title></rect>\n",
                top + row,
                (x1 - x0).max(0.5),
                lane - 4.0,
                escape(&label),
                e.start_ms(),
                e.end_ms()
            );
        }
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">ready {:.0} ms, stall {:.0} ms</text>\n",
            x(s.ready_ms).min(left + width - 150.0),
            top + 2.0 * lane + 12.0,
            s.ready_ms,
            s.stall_ms
        );
    }
    let axis = height - 25.0;
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{axis}\" x2=\"{:.1}\" y2=\"{axis}\" stroke=\"black\"/>\n\
         <text x=\"{left}\" y=\"{:.1}\">0</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0} ms</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\">G1: blue, G2: green, load: orange, stall: red, decode pass: purple, G1 restored: grey</text>\n</svg>\n",
        left + width,
        axis + 15.0,
        left + width,
        axis + 15.0,
        end,
        left + 200.0,
        axis + 15.0,
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
