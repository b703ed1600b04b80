//! Running prefill under a graph-switching schedule ([`crate::schedule`]):
//! each block of layers runs its prefill chunks on its prefill graph (G1)
//! until the schedule switches it to its verify graph (G2), whose load runs
//! on a worker thread while the compute thread runs other blocks; a block
//! already on G2 runs its remaining prefill rows as G2 sub-chunks. Decode
//! and verification passes then run on G2.
//!
//! On an accelerator whose compiled graphs load and unload per block (QNN
//! graph groups saved in the context-binary cache), this is where memory
//! holds one graph per block. On the CPU nothing loads, so the schedule
//! keeps every chunk on G1 and only its bookkeeping remains.

use crate::engine::{Engine, LogitsWanted};
use crate::schedule::{self, BlockCosts, Event, GraphKind, ScheduleInput};
use crate::{Error, Result};
use coordgen_graph::{BucketKind, ExecParams, SessionState};
use coordgen_qnn::GraphGroup;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a block's prefill graph gives way to its verify graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Switching {
    /// Switch blocks from last to first during the last prefill chunk(s),
    /// hiding each load under other blocks' compute (the paper's schedule):
    /// one resident graph per block.
    #[default]
    Progressive,
    /// Prefill on G1 throughout, then switch every block: decoding waits
    /// for all the loads. One resident graph per block.
    Naive,
    /// Keep both graphs of every block resident: nothing to switch, twice
    /// the graph memory.
    BothResident,
}

impl Switching {
    pub const ALL: [Switching; 3] = [
        Switching::Progressive,
        Switching::Naive,
        Switching::BothResident,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Switching::Progressive => "progressive",
            Switching::Naive => "naive",
            Switching::BothResident => "both",
        }
    }

    pub fn parse(name: &str) -> Option<Switching> {
        Switching::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// The graphs a block swaps: its groups in the prefill buckets (G1) and in
/// the verify buckets (G2). Empty on the CPU, where nothing loads.
#[derive(Clone, Default)]
pub(crate) struct BlockGroups {
    pub g1: Vec<Arc<GraphGroup>>,
    pub g2: Vec<Arc<GraphGroup>>,
}

/// What the engine knows about switching, behind one lock.
pub(crate) struct SwitchState {
    pub mode: Switching,
    /// Forces the first switch to block boundary `chunk · N + block`
    /// (experiments and tests); `None` lets the schedule choose.
    pub start_override: Option<usize>,
    /// The graph each block has resident.
    pub resident: Vec<GraphKind>,
    pub groups: Vec<BlockGroups>,
    /// Per-block costs, measured at the first scheduled prefill.
    pub profile: Option<Vec<BlockCosts>>,
    /// Events of the current recording, if one is on.
    pub recording: Option<Recording>,
}

/// A timeline being recorded (times from `epoch`).
pub(crate) struct Recording {
    pub epoch: Instant,
    pub events: Vec<Event>,
    /// Most bytes of graph binaries resident at once.
    pub peak_graph_bytes: u64,
}

/// A recorded request: what [`Engine::take_timeline`] returns.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timeline {
    pub events: Vec<Event>,
    /// Most bytes of compiled graphs resident at once while recording (the
    /// sizes of their context binaries; 0 on the CPU).
    pub peak_resident_graph_bytes: u64,
}

impl SwitchState {
    /// Whether any block has graphs to load (an accelerator with saved
    /// graph groups).
    pub fn swappable(&self) -> bool {
        self.groups.iter().any(|g| !g.g2.is_empty())
    }
}

fn ms_since(epoch: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(epoch).as_secs_f64() * 1e3
}

/// Loads every group of a block, on the loader thread.
fn load_groups(groups: &[Arc<GraphGroup>]) -> std::result::Result<Duration, String> {
    let mut total = Duration::ZERO;
    for g in groups {
        total += g.load().map_err(|e| e.to_string())?;
    }
    Ok(total)
}

/// Bytes of the graph binaries resident now.
fn resident_graph_bytes(groups: &[BlockGroups]) -> u64 {
    groups
        .iter()
        .flat_map(|g| g.g1.iter().chain(&g.g2))
        .filter(|g| g.is_loaded())
        .map(|g| g.binary_bytes())
        .sum()
}

fn unload_groups(groups: &[Arc<GraphGroup>]) -> Result<()> {
    for g in groups {
        g.unload()?;
    }
    Ok(())
}

impl Engine {
    /// How blocks switch from their prefill to their verify graphs.
    pub fn switching(&self) -> Switching {
        self.inner
            .switching
            .lock()
            .map(|s| s.mode)
            .unwrap_or_default()
    }

    /// Sets how blocks switch; `start` forces the first switch to a block
    /// boundary (`chunk · blocks + block`), for experiments. Switching to
    /// [`Switching::BothResident`] loads every graph now.
    pub fn set_switching(&self, mode: Switching, start: Option<usize>) -> Result<()> {
        let mut s = self.switch_state()?;
        s.mode = mode;
        s.start_override = start;
        if mode == Switching::BothResident {
            for (b, groups) in s.groups.clone().iter().enumerate() {
                load_groups(&groups.g1)
                    .and_then(|_| load_groups(&groups.g2))
                    .map_err(|message| {
                        Error::InvalidModel(format!("loading block {b}: {message}"))
                    })?;
            }
        }
        Ok(())
    }

    /// Per block: whether its prefill graphs (G1) and its verify graphs
    /// (G2) are resident. On the CPU nothing loads: both always are.
    pub fn residency(&self) -> Result<Vec<(bool, bool)>> {
        let s = self.switch_state()?;
        let loaded = |list: &[Arc<GraphGroup>]| list.iter().all(|g| g.is_loaded());
        Ok(s.groups
            .iter()
            .map(|g| (loaded(&g.g1), loaded(&g.g2)))
            .collect())
    }

    /// Starts recording a timeline of the passes (chunk runs per block,
    /// loads, stalls, verification passes).
    pub fn start_timeline(&self) -> Result<()> {
        let mut s = self.switch_state()?;
        let resident = resident_graph_bytes(&s.groups);
        s.recording = Some(Recording {
            epoch: Instant::now(),
            events: Vec::new(),
            peak_graph_bytes: resident,
        });
        Ok(())
    }

    /// Stops recording and returns the timeline.
    pub fn take_timeline(&self) -> Result<Timeline> {
        Ok(self
            .switch_state()?
            .recording
            .take()
            .map(|r| Timeline {
                events: r.events,
                peak_resident_graph_bytes: r.peak_graph_bytes,
            })
            .unwrap_or_default())
    }

    /// Notes the graph bytes resident now in the recording's peak.
    fn note_residency(&self) -> Result<()> {
        let mut s = self.switch_state()?;
        let resident = resident_graph_bytes(&s.groups);
        if let Some(r) = s.recording.as_mut() {
            r.peak_graph_bytes = r.peak_graph_bytes.max(resident);
        }
        Ok(())
    }

    /// The per-block costs the schedule plans with, measuring them first
    /// if needed (each block's G1 and G2 run once on scratch buffers; each
    /// block's G2 loads once).
    ///
    /// With a context-binary cache the profile is kept in the cache entry,
    /// per thread count, so a machine measures each model and plan once.
    pub fn switch_profile(&self) -> Result<Vec<BlockCosts>> {
        let known = self.switch_state()?.profile.clone();
        if let Some(p) = known {
            return Ok(p);
        }
        let file = self
            .accelerator_report()
            .and_then(|r| r.cache_entry.clone())
            .map(|entry| entry.join(format!("switch-profile-t{}.json", self.threads())));
        let cached = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| serde_json::from_str::<Vec<BlockCosts>>(&text).ok())
            .filter(|p| Some(p.len()) == self.inner.plan.buckets.first().map(|b| b.blocks.len()));
        let profile = match cached {
            Some(p) => p,
            None => {
                let p = self.measure_switch_profile()?;
                if let (Some(f), Ok(text)) = (&file, serde_json::to_string(&p)) {
                    // A cache: failing to write it only costs a measurement.
                    let _ = std::fs::write(f, text);
                }
                p
            }
        };
        self.switch_state()?.profile = Some(profile.clone());
        Ok(profile)
    }

    pub(crate) fn switch_state(&self) -> Result<std::sync::MutexGuard<'_, SwitchState>> {
        self.inner.switching.lock().map_err(|_| {
            Error::InvalidModel("a previous pass panicked while switching graphs".into())
        })
    }

    /// The prefill bucket (G1) and the widest verify bucket (G2).
    fn switch_buckets(&self) -> Result<(usize, usize)> {
        let plan = &self.inner.plan;
        let widest = |kind| {
            plan.buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| b.kind == kind)
                .max_by_key(|(_, b)| b.width)
                .map(|(i, _)| i)
                .ok_or_else(|| Error::InvalidOption {
                    name: "buckets",
                    message: format!("graph switching needs a {kind:?} bucket"),
                })
        };
        Ok((widest(BucketKind::Prefill)?, widest(BucketKind::Verify)?))
    }

    fn measure_switch_profile(&self) -> Result<Vec<BlockCosts>> {
        let (g1, g2) = self.switch_buckets()?;
        let groups = self.switch_state()?.groups.clone();
        let mut state = self.new_state();
        {
            // Each row sees itself and the rows before it.
            let mask = state.boundaries[self.inner.plan.boundaries.tree_mask.0].as_bytes_mut();
            let w = self.inner.plan.buckets[g2].width;
            for i in 0..w {
                for j in 0..=i {
                    if let Some(cell) = mask.get_mut(i * w + j) {
                        *cell = 1;
                    }
                }
            }
        }
        let mut exes = self.executables()?;
        let n = exes[g1].blocks.len();
        let mut costs = Vec::with_capacity(n);
        for b in 0..n {
            // Loads first: the measured runs then find both graphs resident.
            let load_g2_ms = match groups.get(b) {
                Some(g) if !g.g2.is_empty() => {
                    unload_groups(&g.g2)?;
                    load_groups(&g.g2)
                        .map_err(Error::InvalidModel)?
                        .as_secs_f64()
                        * 1e3
                }
                _ => 0.0,
            };
            let mut time = |bucket: usize| -> Result<f64> {
                let width = self.inner.plan.buckets[bucket].width;
                let params = ExecParams {
                    n_valid: width,
                    past_len: 0,
                };
                let started = Instant::now();
                exes[bucket].blocks[b].run(&mut state, &params)?;
                Ok(started.elapsed().as_secs_f64() * 1e3)
            };
            // The first run of a graph pays one-time costs: time the second.
            time(g1)?;
            let g1_ms = time(g1)?;
            time(g2)?;
            let g2_ms = time(g2)?;
            costs.push(BlockCosts {
                load_g2_ms,
                g1_ms,
                g2_ms,
            });
            // Back to one resident graph: G2 goes until the schedule wants it.
            if let Some(g) = groups.get(b) {
                if !g.g2.is_empty() && self.switch_state()?.resident[b] == GraphKind::G1 {
                    unload_groups(&g.g2)?;
                }
            }
        }
        Ok(costs)
    }

    /// Whether causal passes run under the switching machinery (rather
    /// than the plain chunk loop).
    pub(crate) fn scheduled(&self) -> bool {
        let Ok(s) = self.switch_state() else {
            return false;
        };
        // A recording goes through here too, so that every schedule (and
        // the CPU) shows its block runs.
        s.recording.is_some()
            || (s.mode != Switching::BothResident && (s.swappable() || s.start_override.is_some()))
    }

    /// A causal pass under the switching schedule; see the module docs.
    pub(crate) fn forward_scheduled(
        &self,
        state: &mut SessionState,
        tokens: &[u32],
        past_len: usize,
        wanted: LogitsWanted,
        logits_out: &mut Vec<f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let (g1, g2) = self.switch_buckets()?;
        let plan = &self.inner.plan;
        let (w1, w2) = (plan.buckets[g1].width, plan.buckets[g2].width);
        let n_blocks = plan.buckets[g1].blocks.len();
        let (mode, all_on_g2, start_override) = {
            let s = self.switch_state()?;
            let all_on_g2 = s.resident.iter().all(|&r| r == GraphKind::G2);
            (s.mode, all_on_g2, s.start_override)
        };
        // Both graphs resident: nothing loads or unloads, decoding runs on G2.
        let both = mode == Switching::BothResident;
        // A decode step or a short append once switched: one G2 pass.
        if (all_on_g2 || both) && tokens.len() <= w2 {
            let started = Instant::now();
            self.run_causal_on_g2(state, g2, tokens, past_len, wanted, logits_out)?;
            self.record(|epoch| Event::Pass {
                rows: tokens.len(),
                start_ms: ms_since(epoch, started),
                end_ms: ms_since(epoch, Instant::now()),
            })?;
            progress(tokens.len(), tokens.len());
            return Ok(());
        }
        // Prefill needs every block on G1 first (after an earlier request
        // switched them): switch back, waiting.
        if !both {
            self.switch_back_to_g1()?;
        }

        let chunk_rows: Vec<usize> = tokens.chunks(w1).map(<[u32]>::len).collect();
        let nothing_loads = !self.switch_state()?.swappable();
        let start = match (mode, start_override) {
            (Switching::BothResident, _) => usize::MAX,
            (_, Some(start)) => start,
            // Nothing to hide (the CPU): switching early would only trade
            // G1 runs for G2 sub-chunks.
            (_, None) if nothing_loads => chunk_rows.len() * n_blocks,
            (Switching::Naive, None) => chunk_rows.len() * n_blocks,
            _ => {
                let input = ScheduleInput {
                    blocks: self.switch_profile()?,
                    chunk_rows: chunk_rows.clone(),
                    g1_width: w1,
                    g2_width: w2,
                };
                first_load_position(&schedule::progressive(&input), n_blocks)
            }
        };
        let groups = self.switch_state()?.groups.clone();
        let epoch = self.switch_state()?.recording.as_ref().map(|r| r.epoch);

        std::thread::scope(|scope| -> Result<()> {
            let (to_loader, jobs) = mpsc::channel::<(usize, Vec<Arc<GraphGroup>>)>();
            let (done_tx, done) = mpsc::channel::<(
                usize,
                Instant,
                Instant,
                std::result::Result<Duration, String>,
            )>();
            scope.spawn(move || {
                for (block, list) in jobs {
                    let started = Instant::now();
                    let result = load_groups(&list);
                    if done_tx
                        .send((block, started, Instant::now(), result))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut next = n_blocks.checked_sub(1);
            let mut in_flight: Option<usize> = None;
            let mut exes = self.executables()?;
            let boundaries = chunk_rows.len() * n_blocks;
            let finish = |msg: (
                usize,
                Instant,
                Instant,
                std::result::Result<Duration, String>,
            ),
                          next: &mut Option<usize>|
             -> Result<()> {
                let (block, t0, t1, result) = msg;
                result.map_err(|m| Error::InvalidModel(format!("loading block {block}: {m}")))?;
                self.switch_state()?.resident[block] = GraphKind::G2;
                *next = block.checked_sub(1);
                self.note_residency()?;
                let loaded = t1 > t0;
                if let (Some(epoch), true) = (epoch, loaded) {
                    self.record(|_| Event::Load {
                        block,
                        start_ms: ms_since(epoch, t0),
                        end_ms: ms_since(epoch, t1),
                    })?;
                }
                Ok(())
            };
            let swappable = !both && groups.iter().any(|g| !g.g2.is_empty());
            // Hands block `j`'s G2 to the loader (its G1 goes first: one
            // resident graph per block) and returns it as in flight; with
            // nothing to load, the block is switched at once.
            let start_load = |j: usize, next: &mut Option<usize>| -> Result<Option<usize>> {
                if swappable {
                    unload_groups(&groups[j].g1)?;
                    to_loader
                        .send((j, groups[j].g2.clone()))
                        .map_err(|_| Error::InvalidModel("the graph loader stopped".into()))?;
                    Ok(Some(j))
                } else {
                    let now = Instant::now();
                    finish((j, now, now, Ok(Duration::ZERO)), next)?;
                    Ok(None)
                }
            };
            let mut done_rows = 0;
            for position in 0..=boundaries {
                if in_flight.is_some() {
                    if let Ok(msg) = done.try_recv() {
                        in_flight = None;
                        finish(msg, &mut next)?;
                    }
                }
                // A block about to run would wait for its own load: start
                // that load after it, under the blocks that follow.
                let due = (position < boundaries).then_some(position % n_blocks);
                if position >= start && in_flight.is_none() && next != due {
                    if let Some(j) = next {
                        in_flight = start_load(j, &mut next)?;
                    }
                }
                if position == boundaries {
                    break;
                }
                let (c, b) = (position / n_blocks, position % n_blocks);
                let rows = chunk_rows[c];
                let chunk_start = c * w1;
                if b == 0 {
                    self.begin_chunk(
                        state,
                        &mut exes[g1],
                        &tokens[chunk_start..chunk_start + rows],
                        past_len + chunk_start,
                    )?;
                }
                if in_flight == Some(b) {
                    // The block is due but its G2 is still loading.
                    let waited = Instant::now();
                    let msg = done
                        .recv()
                        .map_err(|_| Error::InvalidModel("the graph loader stopped".into()))?;
                    in_flight = None;
                    finish(msg, &mut next)?;
                    self.record(|epoch| Event::Stall {
                        block: b,
                        start_ms: ms_since(epoch, waited),
                        end_ms: ms_since(epoch, Instant::now()),
                    })?;
                }
                let on_g2 = !both && self.switch_state()?.resident[b] == GraphKind::G2;
                let started = Instant::now();
                let runs = if on_g2 {
                    self.run_block_on_g2(state, &mut exes, g2, b, rows, past_len + chunk_start)?
                } else {
                    let params = ExecParams {
                        n_valid: rows,
                        past_len: past_len + chunk_start,
                    };
                    exes[g1].blocks[b].run(state, &params)?;
                    1
                };
                self.record(|epoch| Event::Compute {
                    chunk: c,
                    block: b,
                    graph: if on_g2 { GraphKind::G2 } else { GraphKind::G1 },
                    runs,
                    start_ms: ms_since(epoch, started),
                    end_ms: ms_since(epoch, Instant::now()),
                })?;
                if b + 1 == n_blocks {
                    let last = c + 1 == chunk_rows.len();
                    let keep = match (wanted, last) {
                        (LogitsWanted::All, _) => Some(LogitsWanted::All),
                        (LogitsWanted::Last, true) => Some(LogitsWanted::Last),
                        (LogitsWanted::Last, false) => None,
                    };
                    let params = ExecParams {
                        n_valid: rows,
                        past_len: past_len + chunk_start,
                    };
                    self.finish_chunk(state, &mut exes[g1], &params, keep, logits_out)?;
                    done_rows += rows;
                    progress(done_rows, tokens.len());
                }
            }
            // Decoding needs every block on G2: the remaining loads wait.
            loop {
                if in_flight.is_some() {
                    let waited = Instant::now();
                    let msg = done
                        .recv()
                        .map_err(|_| Error::InvalidModel("the graph loader stopped".into()))?;
                    let block = msg.0;
                    finish(msg, &mut next)?;
                    self.record(|epoch| Event::Stall {
                        block,
                        start_ms: ms_since(epoch, waited),
                        end_ms: ms_since(epoch, Instant::now()),
                    })?;
                }
                let Some(j) = next else { break };
                in_flight = start_load(j, &mut next)?;
            }
            drop(to_loader);
            Ok(())
        })
    }

    /// Puts every block back on its prefill graph (G1) now, as the next
    /// prefill would first (after an earlier request switched them to G2).
    pub fn restore_prefill_graphs(&self) -> Result<()> {
        self.switch_back_to_g1()
    }

    /// Every block back on G1, loading in turn (after an earlier request).
    fn switch_back_to_g1(&self) -> Result<()> {
        let (groups, resident) = {
            let s = self.switch_state()?;
            (s.groups.clone(), s.resident.clone())
        };
        for (b, kind) in resident.iter().enumerate() {
            if *kind == GraphKind::G1 {
                continue;
            }
            let started = Instant::now();
            if let Some(g) = groups.get(b) {
                unload_groups(&g.g2)?;
                load_groups(&g.g1).map_err(Error::InvalidModel)?;
            }
            self.switch_state()?.resident[b] = GraphKind::G1;
            self.note_residency()?;
            self.record(|epoch| Event::Restore {
                block: b,
                start_ms: ms_since(epoch, started),
                end_ms: ms_since(epoch, Instant::now()),
            })?;
        }
        Ok(())
    }

    fn record(&self, event: impl FnOnce(Instant) -> Event) -> Result<()> {
        let mut s = self.switch_state()?;
        if let Some(r) = s.recording.as_mut() {
            let e = event(r.epoch);
            r.events.push(e);
        }
        Ok(())
    }
}

/// Where the schedule's first load starts (a block boundary index; `C·N`
/// when every load waits for the end of prefill).
fn first_load_position(s: &schedule::Schedule, n_blocks: usize) -> usize {
    let first_load = s
        .events
        .iter()
        .find_map(|e| matches!(e, Event::Load { .. }).then(|| e.start_ms()));
    let Some(at) = first_load else {
        return usize::MAX;
    };
    let mut position = 0;
    for e in &s.events {
        if let Event::Compute {
            chunk,
            block,
            start_ms,
            ..
        } = *e
        {
            if start_ms >= at - 1e-9 {
                return chunk * n_blocks + block;
            }
            position = chunk * n_blocks + block + 1;
        }
    }
    position
}
