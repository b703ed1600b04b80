//! Sessions: a KV cache, the tokens it holds, and generation over it.

use crate::engine::{Attend, Engine, LogitsWanted, Pass};
use crate::sampler::{Sampler, SamplerConfig};
use crate::tokenizer::StreamDecoder;
use crate::{Error, Result};
use coordgen_graph::SessionState;
use coordgen_kernels::attention::key_index;
use std::time::{Duration, Instant};

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token (not part of the output).
    EndOfGeneration,
    /// The output reached one of the stop strings (cut before it).
    StopString(String),
    /// `max_tokens` were generated.
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation ends when the text reaches one of these; it is cut before it.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (for benchmarks that need a
    /// fixed number of decode steps).
    pub ignore_end_of_generation: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampler: SamplerConfig::greedy(),
            stop: Vec::new(),
            ignore_end_of_generation: false,
        }
    }
}

/// Wall-clock split of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    /// Prompt tokens that were computed (not reused from the cache).
    pub prefill_tokens: usize,
    pub prefill: Duration,
    pub decode_tokens: usize,
    pub decode: Duration,
}

impl Timings {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill)
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_tokens, self.decode)
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// The result of [`Session::generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (an end-of-generation token is not included).
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV was reused from the previous turn.
    pub reused_tokens: usize,
    pub timings: Timings,
}

/// A conversation's state: the KV cache and the tokens it holds.
pub struct Session {
    engine: Engine,
    state: SessionState,
    /// Tokens whose K/V are in the cache, in order.
    history: Vec<u32>,
    /// Logits after the last token of `history` (empty when unknown).
    last_logits: Vec<f32>,
    scratch_logits: Vec<f32>,
    /// A verify pass's rows, mask, logits and argmaxes (reused every step).
    verify_rows: Vec<u32>,
    verify_mask: Vec<u8>,
    verify_logits: Vec<f32>,
    verify_predicted: Vec<u32>,
    prefill_progress: Option<Box<dyn FnMut(usize, usize) + Send>>,
    /// Whether passes record [`Session::confidence`].
    calibrate: bool,
    /// The model's confidence in each history token, and its alternatives
    /// at each prompt position.
    record: CalibrationRecord,
    /// The last logits row of a calibrating prefill chunk.
    chunk_last_row: Vec<f32>,
}

/// Calibrated branches offered beside each literal candidate per step.
const CALIBRATED_BRANCHES: usize = 4;

/// Prompt tokens per forward pass of a calibrating prefill: every row's
/// logits are kept for the pass only (12.6 MB for a 49k vocabulary). Measured
/// on a 671-token prompt, 2 threads: 0.78 ms per token with chunks of 32,
/// 0.68 with 64, 0.67 with 128 (and 27 MB more peak memory than 64).
const CALIBRATION_CHUNK: usize = 64;

/// What calibrating passes learn about the history (see
/// [`Session::set_calibration`]).
#[derive(Default)]
struct CalibrationRecord {
    /// `confidence[p]`: the probability the model gave `history[p + 1]`
    /// after `history[..=p]` (NaN where it was not computed).
    confidence: Vec<f32>,
    /// Alternatives kept per position (0: none).
    top_k: usize,
    /// `alternatives[p * top_k..][..top_k]`: the model's likeliest tokens
    /// after `history[..=p]`, likeliest first; `(u32::MAX, 0)` pads
    /// positions with fewer (or none: those not from a prefill).
    alternatives: Vec<(u32, f32)>,
    /// Scratch of the softmax and of the top-K selection.
    scratch: Vec<f32>,
    top: Vec<(u32, f32)>,
}

/// The padding of [`CalibrationRecord::alternatives`].
const NO_ALTERNATIVE: (u32, f32) = (u32::MAX, 0.0);

impl CalibrationRecord {
    fn with_capacity(positions: usize) -> Self {
        CalibrationRecord {
            confidence: Vec::with_capacity(positions),
            ..Default::default()
        }
    }

    /// Records at `position` the probability of `token` under `logits`
    /// (growing the record with unknowns as needed) and, when
    /// `alternatives`, the top K of `logits`.
    fn record(&mut self, position: usize, logits: &[f32], token: u32, alternatives: bool) {
        let ks = coordgen_kernels::KernelSet::best();
        let k = if alternatives { self.top_k } else { 0 };
        let p = coordgen_kernels::ops::softmax_probability_top_k(
            ks,
            logits,
            token as usize,
            k,
            &mut self.scratch,
            &mut self.top,
        );
        if self.confidence.len() <= position {
            self.confidence.resize(position + 1, f32::NAN);
        }
        self.confidence[position] = p;
        if self.top_k > 0 {
            let end = (position + 1) * self.top_k;
            if self.alternatives.len() < end {
                self.alternatives.resize(end, NO_ALTERNATIVE);
            }
            let slot = &mut self.alternatives[position * self.top_k..end];
            slot.fill(NO_ALTERNATIVE);
            for (dst, &src) in slot.iter_mut().zip(&self.top) {
                *dst = src;
            }
        }
    }

    /// Keeps the first `positions` entries.
    fn truncate(&mut self, positions: usize) {
        self.confidence.truncate(positions);
        self.alternatives.truncate(positions * self.top_k);
    }

    fn clear(&mut self) {
        self.confidence.clear();
        self.alternatives.clear();
    }

    fn alternatives(&self, position: usize) -> &[(u32, f32)] {
        let k = self.top_k;
        let slot = self
            .alternatives
            .get(position * k..(position + 1) * k)
            .unwrap_or(&[]);
        let n = slot.iter().take_while(|a| a.0 != u32::MAX).count();
        &slot[..n]
    }
}

impl Session {
    pub(crate) fn new(engine: Engine) -> Self {
        let state = engine.new_state();
        // The history never outgrows the context: reserving it up front
        // (4 bytes a token) keeps decode steps free of allocations.
        let context = engine.context_length();
        let history = Vec::with_capacity(context);
        Session {
            engine,
            state,
            history,
            last_logits: Vec::new(),
            scratch_logits: Vec::new(),
            verify_rows: Vec::new(),
            verify_mask: Vec::new(),
            verify_logits: Vec::new(),
            verify_predicted: Vec::new(),
            prefill_progress: None,
            calibrate: false,
            // Like the history: no allocation while decoding.
            record: CalibrationRecord::with_capacity(context),
            chunk_last_row: Vec::new(),
        }
    }

    /// Turns on (or off) the record of the model's confidence in each token
    /// of the history ([`Session::confidence`]): prefill then computes the
    /// logits of every prompt row (the output head for all rows, about a
    /// tenth more prefill time), and speculative steps record the
    /// probability of each token they commit. Context-aligned drafting
    /// reads it to estimate how likely a copy of the context is accepted.
    pub fn set_calibration(&mut self, on: bool) {
        self.calibrate = on;
    }

    /// With calibration on, also keep the model's `k` likeliest next tokens
    /// at each prompt position ([`Session::alternatives`]; 0: none). A
    /// change forgets what was recorded, so the next prefill computes it.
    pub fn set_calibration_alternatives(&mut self, k: usize) {
        if k != self.record.top_k {
            self.record.clear();
            self.record.top_k = k;
        }
    }

    /// `confidence()[p]`: the probability the model gave `history[p + 1]`
    /// after `history[..=p]`, where known (NaN elsewhere; the record may be
    /// shorter than the history).
    pub fn confidence(&self) -> &[f32] {
        &self.record.confidence
    }

    /// The model's likeliest tokens after `history[..=position]` with their
    /// probabilities, likeliest first, as a calibrating prefill recorded
    /// them ([`Session::set_calibration_alternatives`]; empty where not).
    pub fn alternatives(&self, position: usize) -> &[(u32, f32)] {
        self.record.alternatives(position)
    }

    /// Calls `f(done, total)` after each prefill chunk (for progress bars).
    pub fn on_prefill_progress(&mut self, f: impl FnMut(usize, usize) + Send + 'static) {
        self.prefill_progress = Some(Box::new(f));
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Tokens the cache holds.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Logits after the last token of the history (empty before any prefill).
    pub fn logits(&self) -> &[f32] {
        &self.last_logits
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.history.clear();
        self.last_logits.clear();
        self.record.clear();
    }

    /// Rolls the history back to its first `len` tokens (no-op when it holds
    /// no more), e.g. to drop rejected draft tokens or to repeat a pass on
    /// the same prefix. The cached K/V of the dropped tokens are simply
    /// overwritten by later passes. The logits after the new last token are
    /// unknown afterwards ([`Session::logits`] is empty).
    pub fn truncate(&mut self, len: usize) {
        if len < self.history.len() {
            self.history.truncate(len);
            self.record.truncate(len.saturating_sub(1));
            self.last_logits.clear();
        }
    }

    /// Makes the session hold exactly `tokens`, reusing the cached prefix they
    /// share with what it holds, and computes the logits after the last one.
    /// Returns how many tokens were reused.
    pub fn set_tokens(&mut self, tokens: &[u32]) -> Result<usize> {
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let context = self.engine.context_length();
        if tokens.len() > context {
            return Err(Error::ContextOverflow {
                needed: tokens.len(),
                context,
            });
        }
        let vocab = self.engine.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        let mut common = self
            .history
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        if self.calibrate {
            // Reuse only a prefix whose confidences are known (but the last
            // one's, which the next token's pass computes).
            let known = self
                .record
                .confidence
                .iter()
                .take_while(|c| !c.is_nan())
                .count();
            if known + 1 < common {
                common = known;
            }
        }
        if common == tokens.len()
            && self.history.len() == tokens.len()
            && !self.last_logits.is_empty()
        {
            return Ok(common);
        }
        // At least one token must run to produce logits.
        common = common.min(tokens.len() - 1);
        self.history.truncate(common);
        self.record.truncate(common.saturating_sub(1));
        self.last_logits.clear();
        if self.calibrate {
            self.append_calibrated(&tokens[common..])?;
        } else {
            self.append(&tokens[common..])?;
        }
        Ok(common)
    }

    /// Appends `tokens` after the history and computes the logits after the
    /// last one. On error the session is left as it was before the call.
    pub fn append(&mut self, tokens: &[u32]) -> Result<()> {
        let past = self.history.len();
        let mut logits = std::mem::take(&mut self.scratch_logits);
        let mut no_progress = |_: usize, _: usize| {};
        let progress: &mut dyn FnMut(usize, usize) =
            match (&mut self.prefill_progress, tokens.len() > 1) {
                (Some(f), true) => f.as_mut(),
                _ => &mut no_progress,
            };
        let result = self.engine.forward(
            &mut self.state,
            Pass {
                tokens,
                past_len: past,
                attend: Attend::Causal,
                wanted: LogitsWanted::Last,
            },
            &mut logits,
            progress,
        );
        if let Err(e) = result {
            self.scratch_logits = logits;
            // Slots after `past` may hold partial writes; they are unused.
            return Err(e);
        }
        self.history.extend_from_slice(tokens);
        self.scratch_logits = std::mem::replace(&mut self.last_logits, logits);
        Ok(())
    }

    /// [`Session::append`] that also records the model's confidence in each
    /// appended token ([`Session::set_calibration`]): chunks of
    /// [`CALIBRATION_CHUNK`] tokens with every row's logits, of which only
    /// the probability of the next token is kept. On error the session is
    /// left as it was before the call.
    fn append_calibrated(&mut self, tokens: &[u32]) -> Result<()> {
        let past = self.history.len();
        let vocab = self.engine.config().vocab_size;
        let mut logits = std::mem::take(&mut self.scratch_logits);
        let mut last_row = std::mem::take(&mut self.chunk_last_row);
        last_row.clear();
        last_row.extend_from_slice(&self.last_logits);
        let mut result = Ok(());
        for (index, piece) in tokens.chunks(CALIBRATION_CHUNK).enumerate() {
            let base = self.history.len();
            result = self.engine.forward(
                &mut self.state,
                Pass {
                    tokens: piece,
                    past_len: base,
                    attend: Attend::Causal,
                    wanted: LogitsWanted::All,
                },
                &mut logits,
                &mut |_, _| {},
            );
            if result.is_err() {
                break;
            }
            // The row before the chunk predicts its first token; row i its
            // token i + 1.
            if base > 0 && last_row.len() == vocab {
                self.record.record(base - 1, &last_row, piece[0], true);
            }
            for (i, (row, &next)) in logits.chunks_exact(vocab).zip(&piece[1..]).enumerate() {
                self.record.record(base + i, row, next, true);
            }
            last_row.clear();
            last_row.extend_from_slice(
                logits
                    .get(logits.len().saturating_sub(vocab)..)
                    .unwrap_or(&[]),
            );
            self.history.extend_from_slice(piece);
            if let Some(progress) = &mut self.prefill_progress {
                progress(
                    (index * CALIBRATION_CHUNK + piece.len()).min(tokens.len()),
                    tokens.len(),
                );
            }
        }
        if let Err(e) = result {
            // Slots after `past` may hold partial writes; they are unused.
            self.history.truncate(past);
            self.record.truncate(past.saturating_sub(1));
            self.scratch_logits = logits;
            self.chunk_last_row = last_row;
            return Err(e);
        }
        self.scratch_logits = logits;
        self.last_logits.clear();
        self.last_logits.extend_from_slice(&last_row);
        self.chunk_last_row = last_row;
        Ok(())
    }

    /// Teacher forcing: appends `tokens` and returns the logits after each of
    /// them (`tokens.len() * vocab` values).
    pub fn append_all_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.append_all_logits_into(tokens, &mut logits)?;
        Ok(logits)
    }

    /// [`Session::append_all_logits`] into a caller's buffer (cleared first),
    /// so repeated passes reuse one allocation.
    pub fn append_all_logits_into(&mut self, tokens: &[u32], logits: &mut Vec<f32>) -> Result<()> {
        let past = self.history.len();
        self.engine.forward(
            &mut self.state,
            Pass {
                tokens,
                past_len: past,
                attend: Attend::Causal,
                wanted: LogitsWanted::All,
            },
            logits,
            &mut |_, _| {},
        )?;
        self.history.extend_from_slice(tokens);
        let vocab = self.engine.config().vocab_size;
        self.last_logits.clear();
        self.last_logits
            .extend_from_slice(&logits[logits.len() - vocab..]);
        Ok(())
    }

    /// Evaluates a token tree after the history without committing it:
    /// returns the logits after every node. `mask[i * n + j] != 0` when node
    /// `i` sees node `j` (its ancestors and itself).
    pub fn eval_tree(&mut self, tokens: &[u32], mask: &[u8]) -> Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.eval_tree_into(tokens, mask, &mut logits)?;
        Ok(logits)
    }

    /// [`Session::eval_tree`] into a caller's buffer (cleared first).
    pub fn eval_tree_into(
        &mut self,
        tokens: &[u32],
        mask: &[u8],
        logits: &mut Vec<f32>,
    ) -> Result<()> {
        self.engine.forward(
            &mut self.state,
            Pass {
                tokens,
                past_len: self.history.len(),
                attend: Attend::Tree(mask),
                wanted: LogitsWanted::All,
            },
            logits,
            &mut |_, _| {},
        )
    }

    /// One greedy speculative step. `root` is the token to commit next (the
    /// model's choice, not yet in the history); `tree` holds draft tokens
    /// below it. One verify pass computes every row; the root and the draft
    /// tokens that match the model's own greedy choices are committed (their
    /// K/V rows moved into place, nothing recomputed), and the model's next
    /// token after them is returned as the next root.
    ///
    /// The committed tokens and the returned one are exactly what plain
    /// greedy decoding would produce: every row's logits equal sequential
    /// decoding's bitwise (batch-invariant kernels, attention ordered by
    /// sequence position).
    pub fn speculative_step(
        &mut self,
        root: u32,
        tree: &crate::spec::DraftTree,
    ) -> Result<SpecStep> {
        self.verify_step(root, tree, &mut Acceptor::Greedy)
    }

    /// [`Session::speculative_step`] in sampling mode: the committed tokens
    /// and the next root follow `sampler`'s distribution exactly
    /// ([`crate::spec::TreeSampling`]), as if drawn one at a time.
    pub fn speculative_step_sampled(
        &mut self,
        root: u32,
        tree: &crate::spec::DraftTree,
        sampler: &mut Sampler,
        scratch: &mut crate::spec::TreeSampling,
    ) -> Result<SpecStep> {
        self.verify_step(root, tree, &mut Acceptor::Sampled { sampler, scratch })
    }

    fn verify_step(
        &mut self,
        root: u32,
        tree: &crate::spec::DraftTree,
        acceptor: &mut Acceptor,
    ) -> Result<SpecStep> {
        let mut rows = std::mem::take(&mut self.verify_rows);
        let mut mask = std::mem::take(&mut self.verify_mask);
        let mut logits = std::mem::take(&mut self.verify_logits);
        tree.rows(root, &mut rows);
        tree.mask(&mut mask);
        let evaluated = self.eval_tree_into(&rows, &mask, &mut logits);
        let step = evaluated.and_then(|()| self.commit_tree(root, tree, &rows, &logits, acceptor));
        self.verify_rows = rows;
        self.verify_mask = mask;
        self.verify_logits = logits;
        step
    }

    /// Accepts a path of an evaluated tree and commits it (see
    /// [`Session::speculative_step`]).
    fn commit_tree(
        &mut self,
        root: u32,
        tree: &crate::spec::DraftTree,
        rows: &[u32],
        logits: &[f32],
        acceptor: &mut Acceptor,
    ) -> Result<SpecStep> {
        let vocab = self.engine.config().vocab_size;
        let shape_error = |rows_out: usize| Error::InvalidOption {
            name: "tree",
            message: format!(
                "the verify pass returned {rows_out} rows for {} tokens",
                rows.len()
            ),
        };
        let past = self.history.len();
        let acceptance = match acceptor {
            Acceptor::Greedy => {
                self.verify_predicted.clear();
                self.verify_predicted
                    .extend(logits.chunks_exact(vocab).map(crate::sampler::argmax));
                tree.accept_greedy(&self.verify_predicted)
                    .ok_or_else(|| shape_error(self.verify_predicted.len()))?
            }
            Acceptor::Sampled { sampler, scratch } => {
                // The sampler sees the root as history (the repetition
                // penalty's window), so it goes in first; undone on error.
                self.history.push(root);
                let accepted = scratch.accept(tree, logits, vocab, sampler, &self.history);
                self.history.pop();
                accepted?
            }
        };
        // Move the accepted rows' K/V next to the root's (row i + 1 of the
        // pass holds node i). Sources never lie before their destinations.
        let c = self.engine.config();
        let kv_dim = c.n_kv_heads * c.head_dim;
        let row_bytes = kv_dim * 2;
        for (i, &node) in acceptance.path.iter().enumerate() {
            let (src, dst) = (past + 1 + node, past + 1 + i);
            if src == dst {
                continue;
            }
            for half in 0..self.state.kv.halves() {
                let Some(bytes) = self.state.kv.half_mut(half) else {
                    continue;
                };
                if half % 2 == 0 {
                    // K: the blocked layout (`coordgen_graph::KV_SLOT_BLOCK`).
                    for col in 0..kv_dim {
                        let from = 2 * key_index(src, col, kv_dim);
                        bytes.copy_within(from..from + 2, 2 * key_index(dst, col, kv_dim));
                    }
                } else {
                    bytes.copy_within(src * row_bytes..(src + 1) * row_bytes, dst * row_bytes);
                }
            }
        }
        if self.calibrate {
            // The root came from the last logits; row 0 (the root) predicts
            // the first emitted token, node i's row the one after it.
            let known = |c: Option<&f32>| c.is_some_and(|c| !c.is_nan());
            if past > 0
                && self.last_logits.len() == vocab
                && !known(self.record.confidence.get(past - 1))
            {
                self.record.record(past - 1, &self.last_logits, root, false);
            }
            let emitted_rows = std::iter::once(0).chain(acceptance.path.iter().map(|&n| n + 1));
            let emitted = acceptance
                .path
                .iter()
                .map(|&n| tree.token(n))
                .chain(std::iter::once(acceptance.bonus));
            for (i, (row, token)) in emitted_rows.zip(emitted).enumerate() {
                if let Some(row_logits) = logits.get(row * vocab..(row + 1) * vocab) {
                    self.record.record(past + i, row_logits, token, false);
                }
            }
        }
        let accepted: Vec<u32> = acceptance.path.iter().map(|&n| tree.token(n)).collect();
        self.history.push(root);
        self.history.extend_from_slice(&accepted);
        let last_row = acceptance.path.last().map_or(0, |&n| n + 1);
        self.last_logits.clear();
        self.last_logits.extend_from_slice(
            logits
                .get(last_row * vocab..(last_row + 1) * vocab)
                .ok_or_else(|| shape_error(logits.len() / vocab.max(1)))?,
        );
        Ok(SpecStep {
            accepted,
            next: acceptance.bonus,
        })
    }

    /// Times a verify pass of every width from 1 to `widest` rows after the
    /// current history (a chain of the last token; nothing is committed), and
    /// returns the times in ms, index = rows (index 0 unused). Each width is
    /// the fastest of three passes; widths between measured ones are
    /// interpolated, and the result never decreases with width.
    pub fn measure_verify_costs(&mut self, widest: usize) -> Result<Vec<f64>> {
        let widest = widest.clamp(1, self.engine.max_verify_width());
        if self.history.len() + widest > self.engine.context_length() {
            return Err(Error::ContextOverflow {
                needed: self.history.len() + widest,
                context: self.engine.context_length(),
            });
        }
        let token = self.history.last().copied().unwrap_or(0);
        let mut measured: Vec<usize> = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
            .into_iter()
            .filter(|&w| w < widest)
            .collect();
        measured.push(widest);
        let mut costs = vec![0.0; widest + 1];
        let mut logits = std::mem::take(&mut self.verify_logits);
        let mut chain = crate::spec::DraftTree::new();
        let mut result = Ok(());
        for &w in &measured {
            chain.clear();
            chain.add_path(&vec![token; w - 1], w - 1);
            let tokens = vec![token; w];
            let mut mask = Vec::new();
            chain.mask(&mut mask);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let started = Instant::now();
                if let Err(e) = self.eval_tree_into(&tokens, &mask, &mut logits) {
                    result = Err(e);
                    break;
                }
                best = best.min(started.elapsed().as_secs_f64() * 1e3);
            }
            costs[w] = best;
        }
        self.verify_logits = logits;
        result?;
        // Linear between measured widths, then non-decreasing.
        for pair in measured.windows(2) {
            let (lo, hi) = (pair[0], pair[1]);
            for w in lo + 1..hi {
                let t = (w - lo) as f64 / (hi - lo) as f64;
                costs[w] = costs[lo] + t * (costs[hi] - costs[lo]);
            }
        }
        for w in 2..=widest {
            costs[w] = costs[w].max(costs[w - 1]);
        }
        Ok(costs)
    }

    /// The verify costs shared through the engine, measured now (at this
    /// session's depth) if no request has measured them yet.
    fn verify_costs(&mut self, widest: usize) -> Result<Vec<f64>> {
        let engine = self.engine.clone();
        let cache = &engine.inner.verify_costs;
        if let Some(costs) = cache.lock().ok().and_then(|c| c.clone()) {
            if costs.len() > widest {
                return Ok(costs);
            }
        }
        let costs = self.measure_verify_costs(widest)?;
        if let Ok(mut cached) = cache.lock() {
            *cached = Some(costs.clone());
        }
        Ok(costs)
    }

    /// Continues `prompt` (a full token sequence: the cached prefix it shares
    /// with the session's history is reused), streaming text pieces to
    /// `on_text` as they complete. `on_text` returns `false` to cancel.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(params.sampler.clone())?;
        let started = Instant::now();
        let reused = self.set_tokens(prompt)?;
        let prefill = started.elapsed();
        let engine = self.engine.clone();
        let context = self.engine.context_length();
        let mut out = Emitter::new(&engine, params, on_text);
        loop {
            let token = sampler.sample(&self.last_logits, &self.history);
            if !out.emit(token)? {
                break;
            }
            if self.history.len() >= context {
                out.stop_reason = StopReason::ContextFull;
                break;
            }
            self.append(&[token])?;
            out.timings.decode_tokens += 1;
        }
        Ok(out.finish(prompt.len(), reused, prefill))
    }

    /// [`Session::generate`] with speculative decoding: each step `drafter`
    /// proposes candidate continuations, `spec` decides how many of them
    /// one verify pass checks, and the accepted tokens are emitted together.
    ///
    /// The output follows the sampler exactly: with a greedy sampler it is
    /// plain greedy decoding's, token for token; otherwise every token
    /// follows the sampler's distribution given the ones before it (tree
    /// speculative sampling), though the random draws differ from
    /// [`Session::generate`]'s for the same seed.
    pub fn generate_speculative(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        drafter: &mut dyn crate::spec::Drafter,
        spec: &SpecConfig,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<(Generation, SpecStats)> {
        let calibrating = self.calibrate;
        let calibration = spec.calibration.filter(|_| spec.max_draft > 0);
        self.calibrate = calibration.is_some();
        if let Some(config) = calibration {
            self.set_calibration_alternatives(config.top_k);
        }
        let result = self.speculate(prompt, params, drafter, spec, Box::new(on_text));
        self.calibrate = calibrating;
        result
    }

    /// [`Session::generate_speculative`] once the calibration setting is made.
    fn speculate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        drafter: &mut dyn crate::spec::Drafter,
        spec: &SpecConfig,
        on_text: Box<dyn FnMut(&str) -> bool + '_>,
    ) -> Result<(Generation, SpecStats)> {
        let mut sampler = Sampler::new(params.sampler.clone())?;
        let greedy = params.sampler.is_greedy() && params.sampler.repetition_penalty == 1.0;
        let started = Instant::now();
        let reused = self.set_tokens(prompt)?;
        let prefill = started.elapsed();
        let engine = self.engine.clone();
        let context = self.engine.context_length();
        let max_draft = spec
            .max_draft
            .min(engine.max_verify_width().saturating_sub(1));
        let mut out = Emitter::new(&engine, params, on_text);
        let mut stats = SpecStats::default();
        let mut policy = match spec.drafting {
            Drafting::Adaptive if max_draft > 0 => {
                let measuring = Instant::now();
                let costs = self.verify_costs(max_draft + 1)?;
                stats.measure = measuring.elapsed();
                Some(crate::spec::AdaptiveDrafting::new(costs))
            }
            // Draft extension at a fixed width: the extra branches are
            // ranked by the same learned estimates, and the best fill the
            // width (equal costs: every node pays).
            Drafting::Fixed if max_draft > 0 && (spec.calibration.is_some() || spec.reuse) => {
                Some(crate::spec::AdaptiveDrafting::new(vec![1.0; max_draft + 2]))
            }
            _ => None,
        };
        // Draft reuse goes with a policy in greedy mode (it reads the
        // model's argmax at every row).
        let mut reuse =
            (spec.reuse && policy.is_some() && greedy).then(crate::spec::DraftReuse::new);
        let mut calibrated = match spec.calibration {
            Some(config) if self.calibrate && max_draft > 0 => {
                let building = Instant::now();
                let tree = crate::spec::CalibratedTree::build(
                    &self.history,
                    |i| self.record.alternatives(i),
                    config,
                );
                stats.calibration = building.elapsed();
                Some(tree)
            }
            _ => None,
        };
        let mut tree = crate::spec::DraftTree::new();
        let mut candidates = crate::spec::Candidates::default();
        let mut sampling = crate::spec::TreeSampling::new();
        let mut emitted = Vec::with_capacity(max_draft + 1);
        let drafting = Instant::now();
        drafter.reset();
        drafter.observe(&self.history);
        stats.draft += drafting.elapsed();
        let mut root = if greedy {
            crate::sampler::argmax(&self.last_logits)
        } else {
            sampler.sample(&self.last_logits, &self.history)
        };
        'steps: loop {
            if !out.emit(root)? {
                break;
            }
            if self.history.len() >= context {
                out.stop_reason = StopReason::ContextFull;
                break;
            }
            // The root and its tree must fit the context.
            let room = context.saturating_sub(self.history.len() + 1);
            let budget = max_draft.min(room);
            let drafting = Instant::now();
            drafter.observe(&[root]);
            tree.clear();
            candidates.clear();
            if budget > 0 {
                drafter.propose(budget, &mut candidates);
                let literal = candidates.len();
                if let Some(reuse) = &mut reuse {
                    reuse.offer(root, budget, &mut candidates);
                }
                if let Some(calibrated) = &mut calibrated {
                    // What the model says after the root wherever the
                    // context holds it; and beside each copy of the context,
                    // what it said after the position the copy starts from.
                    calibrated.offer_after_token(
                        root,
                        budget,
                        CALIBRATED_BRANCHES,
                        &mut candidates,
                    );
                    for i in 0..literal {
                        let (Some(source), Some((_, match_len))) =
                            (candidates.source(i), candidates.get(i))
                        else {
                            continue;
                        };
                        if let Some(position) = source.checked_sub(1) {
                            calibrated.offer(
                                position,
                                match_len,
                                budget,
                                CALIBRATED_BRANCHES,
                                &mut candidates,
                            );
                        }
                    }
                }
            }
            match &mut policy {
                Some(policy) => {
                    policy.choose(&candidates, &self.record.confidence, budget, &mut tree)
                }
                None => tree.add_candidates(&candidates, budget),
            }
            stats.draft += drafting.elapsed();
            let verifying = Instant::now();
            let step = if greedy {
                self.speculative_step(root, &tree)?
            } else {
                self.speculative_step_sampled(root, &tree, &mut sampler, &mut sampling)?
            };
            let pass = verifying.elapsed();
            stats.verify += pass;
            if let Some(policy) = &mut policy {
                policy.observe_pass(tree.len() + 1, pass.as_secs_f64() * 1e3);
            }
            let drafting = Instant::now();
            if let (Some(reuse), Some((best, _))) = (&mut reuse, candidates.get(0)) {
                reuse.observe(&tree, best, &self.verify_predicted);
            }
            if let Some(policy) = &mut policy {
                emitted.clear();
                emitted.extend_from_slice(&step.accepted);
                emitted.push(step.next);
                policy.learn(&candidates, &self.record.confidence, &emitted);
            }
            drafter.observe(&step.accepted);
            stats.draft += drafting.elapsed();
            stats.steps += 1;
            stats.drafted += tree.len();
            stats.accepted += step.accepted.len();
            *stats.widths.entry(tree.len() + 1).or_insert(0) += 1;
            out.timings.decode_tokens += 1 + step.accepted.len();
            for &t in &step.accepted {
                if !out.emit(t)? {
                    break 'steps;
                }
            }
            root = step.next;
        }
        Ok((out.finish(prompt.len(), reused, prefill), stats))
    }
}

/// How a speculative step accepts draft tokens.
enum Acceptor<'a> {
    /// The model's argmax at every row.
    Greedy,
    /// Tree speculative sampling in the sampler's distribution.
    Sampled {
        sampler: &'a mut Sampler,
        scratch: &'a mut crate::spec::TreeSampling,
    },
}

/// How much of the drafters' candidates each verify pass checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Drafting {
    /// Choose per step, from the measured verify cost by width and the
    /// request's acceptance so far ([`crate::spec::AdaptiveDrafting`]).
    #[default]
    Adaptive,
    /// Fill the draft budget: with calibration or reuse on, the likeliest
    /// nodes of all candidates (draft extension); otherwise every
    /// candidate in the drafter's order (its own rule).
    Fixed,
}

/// Speculative decoding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecConfig {
    /// Most draft tokens per verify pass (verify width - 1); capped by the
    /// widest verify bucket.
    pub max_draft: usize,
    pub drafting: Drafting,
    /// In-context distribution calibration
    /// ([`crate::spec::CalibratedTree`]): a calibrating prefill keeps the
    /// model's confidence in each prompt token and its alternatives there;
    /// adaptive drafting weighs copies by that confidence, and calibrated
    /// branches are drafted beside literal ones. `None`: drafts are ranked
    /// by what the request has accepted so far only.
    pub calibration: Option<crate::spec::CalibrationConfig>,
    /// Draft reuse ([`crate::spec::DraftReuse`]; greedy decoding with
    /// adaptive drafting only: it reads the model's argmax at every row).
    pub reuse: bool,
}

impl Default for SpecConfig {
    /// The full method: width 16, adaptive, calibration and reuse.
    fn default() -> Self {
        SpecConfig {
            max_draft: 15,
            drafting: Drafting::Adaptive,
            calibration: Some(crate::spec::CalibrationConfig::default()),
            reuse: true,
        }
    }
}

/// What speculative decoding did during one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecStats {
    /// Verification passes.
    pub steps: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted (the bonus token of each step not counted).
    pub accepted: usize,
    /// Time spent drafting: indexing the prompt and output, proposing,
    /// choosing the tree and learning from each step.
    pub draft: Duration,
    /// Time spent in verify passes (including acceptance and K/V moves).
    pub verify: Duration,
    /// Time spent building the calibrated token tree (after prefill).
    pub calibration: Duration,
    /// Time spent measuring verify costs (the first adaptive request only).
    pub measure: Duration,
    /// Verify passes by width (rows).
    pub widths: std::collections::BTreeMap<usize, usize>,
}

impl SpecStats {
    /// Mean accepted draft tokens per verification pass.
    pub fn mean_accepted(&self) -> f64 {
        self.accepted as f64 / self.steps.max(1) as f64
    }

    /// Accepted share of the drafted tokens.
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }

    /// Drafting's share of drafting plus verification time.
    pub fn draft_share(&self) -> f64 {
        let total = (self.draft + self.verify).as_secs_f64();
        if total > 0.0 {
            self.draft.as_secs_f64() / total
        } else {
            0.0
        }
    }
}

/// The output side of generation: end-of-generation and stop strings,
/// streaming text, cancellation and the token budget.
struct Emitter<'e, F: FnMut(&str) -> bool> {
    engine: &'e Engine,
    params: &'e GenerateParams,
    on_text: F,
    decoder: StreamDecoder,
    stops: StopMatcher,
    generated: Vec<u32>,
    text: String,
    stop_reason: StopReason,
    timings: Timings,
    decode_started: Instant,
}

impl<'e, F: FnMut(&str) -> bool> Emitter<'e, F> {
    fn new(engine: &'e Engine, params: &'e GenerateParams, on_text: F) -> Self {
        Emitter {
            engine,
            params,
            on_text,
            decoder: StreamDecoder::new(),
            stops: StopMatcher::new(&params.stop),
            generated: Vec::new(),
            text: String::new(),
            stop_reason: StopReason::MaxTokens,
            timings: Timings::default(),
            decode_started: Instant::now(),
        }
    }

    /// Emits `token`; `false` when generation ends here (the reason is set).
    fn emit(&mut self, token: u32) -> Result<bool> {
        if self.generated.len() >= self.params.max_tokens {
            return Ok(false);
        }
        let tokenizer = self.engine.tokenizer();
        if tokenizer.is_end_of_generation(token) && !self.params.ignore_end_of_generation {
            self.stop_reason = StopReason::EndOfGeneration;
            return Ok(false);
        }
        self.generated.push(token);
        let piece = self.decoder.push(tokenizer, token)?;
        let (emit, hit) = self.stops.push(&piece);
        self.text.push_str(&emit);
        if !emit.is_empty() && !(self.on_text)(&emit) {
            self.stop_reason = StopReason::Cancelled;
            return Ok(false);
        }
        if let Some(stop) = hit {
            self.stop_reason = StopReason::StopString(stop);
            return Ok(false);
        }
        Ok(self.generated.len() < self.params.max_tokens)
    }

    fn finish(mut self, prompt_tokens: usize, reused: usize, prefill: Duration) -> Generation {
        if !matches!(
            self.stop_reason,
            StopReason::StopString(_) | StopReason::Cancelled
        ) {
            let rest = self.stops.finish(&self.decoder.finish());
            self.text.push_str(&rest);
            if !rest.is_empty() {
                (self.on_text)(&rest);
            }
        }
        self.timings.prefill_tokens = prompt_tokens - reused;
        self.timings.prefill = prefill;
        self.timings.decode = self.decode_started.elapsed();
        Generation {
            tokens: self.generated,
            text: self.text,
            stop_reason: self.stop_reason,
            prompt_tokens,
            reused_tokens: reused,
            timings: self.timings,
        }
    }
}

/// What one [`Session::speculative_step`] committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecStep {
    /// Draft tokens accepted after the root (all committed).
    pub accepted: Vec<u32>,
    /// The model's next token after them: the next step's root.
    pub next: u32,
}

/// Holds back streamed text that could be the start of a stop string.
struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds a piece; returns the text safe to emit and the stop string hit, if any.
    fn push(&mut self, piece: &str) -> (String, Option<String>) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = hit {
            let emit = self.pending[..at].to_string();
            let stop = stop.clone();
            self.pending.clear();
            return (emit, Some(stop));
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (emit, None)
    }

    fn finish(&mut self, tail: &str) -> String {
        let mut rest = std::mem::take(&mut self.pending);
        rest.push_str(tail);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn stop_strings_hold_back_partial_matches() {
        let mut m = StopMatcher::new(&["\nUser:".to_string()]);
        assert_eq!(m.push("Hello"), ("Hello".to_string(), None));
        assert_eq!(m.push(" world\nUs"), (" world".to_string(), None));
        assert_eq!(
            m.push("er: hi"),
            (String::new(), Some("\nUser:".to_string()))
        );
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("E"), (String::new(), None));
        assert_eq!(m.push("x"), ("Ex".to_string(), None));
        assert_eq!(m.finish("E"), "E");
    }
}
