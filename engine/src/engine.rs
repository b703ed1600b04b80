//! The engine: a loaded model with its compiled plan, shared by sessions.

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::gguf::GgufFile;
use crate::model::{config_from_gguf, GgufWeights};
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use coordgen_cpu::CpuBackend;
use coordgen_graph::{
    lower, Backend, Bucket, BucketKind, ExecParams, Executable, ModelConfig, Plan, PlanOptions,
    SessionState,
};
use coordgen_kernels::{KernelSet, Tier};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Settings of [`Engine::load`]. `Default` gives sane values for a phone-sized model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Worker threads for the CPU backend (`None`: one per core).
    pub threads: Option<usize>,
    /// Longest context a session holds, in tokens (capped at the model's own).
    pub context_length: usize,
    /// Prefill chunk widths.
    pub prefill_widths: Vec<usize>,
    /// Decode / verify widths.
    pub verify_widths: Vec<usize>,
    /// Transformer layers per subgraph block.
    pub layers_per_block: usize,
    /// Force a kernel tier (e.g. `Scalar` to compare against the reference).
    pub kernel_tier: Option<Tier>,
    /// Touch every weight page at load, so the first request does not pay
    /// for page faults.
    pub prefault: bool,
    /// An accelerator for the linear parts of the layers (the CPU runs the
    /// rest, and everything when this is `None`).
    pub accelerator: Option<QnnOptions>,
    /// A Vulkan GPU for every op it supports (the CPU runs the rest, and
    /// takes over if the device is lost). Exclusive with `accelerator`.
    pub gpu: Option<coordgen_vulkan::VulkanOptions>,
    /// How each block's prefill graph gives way to its verify graph on an
    /// accelerator that loads graphs per block (QNN with a context-binary
    /// cache). Elsewhere nothing loads and every mode computes the same.
    pub switching: crate::progressive::Switching,
    /// Forces the first switch to a block boundary (`chunk · blocks +
    /// block`), for experiments; `None` lets the schedule choose.
    pub switch_from: Option<usize>,
}

/// Where and how the QNN HTP backend runs.
#[derive(Clone, Debug, PartialEq)]
pub struct QnnOptions {
    /// The folder holding `libQnnHtp.so` (`tools/fetch-qnn` fills
    /// `.cache/qnn/onnxruntime_qnn`).
    pub folder: PathBuf,
    /// The Snapdragon SoC to compile for (and, on x86-64, to simulate).
    pub soc: coordgen_qnn::Soc,
    /// The format of matmul weights on the HTP.
    pub weights: coordgen_qnn::WeightFormat,
    /// Which parts of each layer the HTP runs: the linear parts (the
    /// default, the paper's split), or whole layers with RoPE and
    /// fixed-length attention.
    pub graphs: coordgen_qnn::GraphScope,
    /// Where compiled context binaries are cached (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
}

/// What the accelerator did at load.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AcceleratorReport {
    pub backend: &'static str,
    pub device: String,
    pub library_build: String,
    pub weights: &'static str,
    /// `linear` or `full-layer`.
    pub scope: &'static str,
    /// Graphs lowered to the accelerator (pieces of subgraphs).
    pub graphs: usize,
    /// Subgraphs split between the accelerator and the CPU.
    pub split_subgraphs: usize,
    pub build_ms: f64,
    pub finalize_ms: f64,
    /// Loading the cached context binary (zero without a cache hit).
    pub load_ms: f64,
    pub cache_hit: bool,
    /// The cache entry (a folder) read or written, if any.
    pub cache_entry: Option<PathBuf>,
    /// Bytes of the context binary written (zero on a hit or without cache).
    pub binary_bytes: u64,
    /// Serializing and writing the binary.
    pub save_ms: f64,
    /// The largest relative RMS error of a converted weight, and its name.
    pub worst_weight_error: Option<(String, f64)>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        let plan = PlanOptions::default();
        EngineOptions {
            threads: None,
            context_length: plan.context_length,
            prefill_widths: plan.prefill_widths,
            verify_widths: plan.verify_widths,
            layers_per_block: plan.layers_per_block,
            kernel_tier: None,
            prefault: true,
            accelerator: None,
            gpu: None,
            switching: crate::progressive::Switching::default(),
            switch_from: None,
        }
    }
}

/// What [`Engine::load_with_progress`] reports while it works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadProgress {
    pub stage: &'static str,
    pub done: u64,
    pub total: u64,
}

/// Compiled executables of one bucket.
pub(crate) struct BucketExecutables {
    pub(crate) width: usize,
    pub(crate) embed: Box<dyn Executable>,
    pub(crate) blocks: Vec<Box<dyn Executable>>,
    pub(crate) head_last: Box<dyn Executable>,
    pub(crate) head_all: Box<dyn Executable>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<GgufFile>,
    pub(crate) config: ModelConfig,
    pub(crate) plan: Plan,
    pub(crate) tokenizer: Tokenizer,
    pub(crate) template: ChatTemplate,
    pub(crate) backend: CpuBackend,
    /// The accelerator next to the CPU, if any.
    accelerator: Option<coordgen_qnn::QnnBackend>,
    accelerator_report: Option<AcceleratorReport>,
    /// The Vulkan GPU, if any.
    gpu: Option<coordgen_vulkan::VulkanBackend>,
    /// Set once the GPU is lost: every executable runs on the CPU after.
    gpu_lost: Arc<std::sync::atomic::AtomicBool>,
    /// One forward pass at a time: executables keep scratch between runs.
    executables: Mutex<Vec<BucketExecutables>>,
    /// Verify pass time by width (ms, index = rows), measured once by the
    /// first speculative request and shared by later ones.
    pub(crate) verify_costs: Mutex<Option<Vec<f64>>>,
    /// Which graph each block has resident, and how blocks switch.
    pub(crate) switching: Mutex<crate::progressive::SwitchState>,
}

/// A loaded model. Cheap to clone; sessions share it.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

/// Which logits a forward pass keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only after the last token.
    Last,
    /// After every token.
    All,
}

/// Rotary positions of a pass's rows.
#[derive(Clone, Copy, Debug)]
enum Positions<'a> {
    /// `first, first + 1, ...` (a chunk of a sequence).
    Sequential(usize),
    /// One per row (tree nodes share positions by depth).
    Given(&'a [i32]),
}

/// One forward pass: `tokens` after `past_len` cached ones.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass<'a> {
    pub tokens: &'a [u32],
    pub past_len: usize,
    pub attend: Attend<'a>,
    pub wanted: LogitsWanted,
}

/// How the tokens of one forward pass see each other.
#[derive(Clone, Copy, Debug)]
pub enum Attend<'a> {
    /// Each token sees the cache and the tokens before it.
    Causal,
    /// A token tree: `mask[i * n + j] != 0` when row `i` sees row `j`.
    Tree(&'a [u8]),
}

impl Engine {
    /// Loads a GGUF model and compiles its plan for the CPU backend.
    pub fn load(path: impl AsRef<Path>, options: EngineOptions) -> Result<Engine> {
        Self::load_with_progress(path, options, |_| {})
    }

    /// [`Engine::load`] that reports its progress.
    pub fn load_with_progress(
        path: impl AsRef<Path>,
        options: EngineOptions,
        mut progress: impl FnMut(LoadProgress),
    ) -> Result<Engine> {
        let path = path.as_ref().to_path_buf();
        progress(LoadProgress {
            stage: "reading",
            done: 0,
            total: 1,
        });
        let file = Arc::new(GgufFile::open(&path)?);
        let config = config_from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        if tokenizer.vocab_size() != config.vocab_size {
            return Err(Error::InvalidModel(format!(
                "the tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let template = ChatTemplate::from_gguf(&file)?;
        if options.context_length == 0 {
            return Err(Error::InvalidOption {
                name: "context_length",
                message: "must be at least 1".into(),
            });
        }
        let plan_options = PlanOptions {
            prefill_widths: options.prefill_widths.clone(),
            verify_widths: options.verify_widths.clone(),
            layers_per_block: options.layers_per_block,
            context_length: options.context_length.min(config.train_context.max(1)),
        };
        let weights = GgufWeights::new(file.clone());
        let plan = lower(&config, &weights, &plan_options)?;

        let kernels: &'static KernelSet = match options.kernel_tier {
            None => KernelSet::best(),
            Some(tier) => {
                let set = KernelSet::for_tier(tier).ok_or_else(|| Error::InvalidOption {
                    name: "kernel_tier",
                    message: format!("this CPU cannot run the {tier} kernels"),
                })?;
                Box::leak(Box::new(set))
            }
        };
        let backend = CpuBackend::with_kernels(kernels, options.threads)?;
        if options.gpu.is_some() && options.accelerator.is_some() {
            return Err(Error::InvalidOption {
                name: "gpu",
                message: "a Vulkan GPU and the QNN accelerator cannot both run the layers".into(),
            });
        }
        let gpu = match &options.gpu {
            None => None,
            Some(o) => Some(coordgen_vulkan::VulkanBackend::new(o)?),
        };
        let gpu_lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared_weights: Arc<dyn coordgen_graph::WeightSource> = Arc::new(weights.clone());
        let (accelerator, cache_entry) = match &options.accelerator {
            None => (None, None),
            Some(qnn) => {
                let (backend, entry) = start_qnn(qnn, &file, &plan)?;
                (Some(backend), entry)
            }
        };

        if options.prefault {
            prefault(&file, &mut progress);
        }
        let total = plan
            .buckets
            .iter()
            .map(|b| b.subgraphs().count())
            .sum::<usize>() as u64;
        let mut done = 0u64;
        let mut released = std::collections::HashSet::new();
        let mut split_subgraphs = 0usize;
        let (mut gpu_pieces, mut gpu_compile_ms) = (0usize, 0f64);
        let mut compile = |g: &coordgen_graph::Subgraph| -> Result<Box<dyn Executable>> {
            let exe = match (&accelerator, &gpu) {
                (None, Some(gpu)) => {
                    let started = std::time::Instant::now();
                    let backends: [&dyn Backend; 2] = [gpu, &backend];
                    let pieces = coordgen_graph::partition(g, &backends)?;
                    if pieces.iter().any(|p| p.backend == 0) && pieces.len() > 1 {
                        split_subgraphs += 1;
                    }
                    gpu_pieces += pieces.iter().filter(|p| p.backend == 0).count();
                    let primary = coordgen_graph::compile_partitioned(g, &backends, &weights)?;
                    gpu_compile_ms += started.elapsed().as_secs_f64() * 1e3;
                    Box::new(crate::fallback::DeviceFallback::new(
                        primary,
                        g,
                        backend.clone(),
                        shared_weights.clone(),
                        gpu_lost.clone(),
                    ))
                }
                (None, None) => backend.compile(g, &weights)?,
                (Some(qnn), _) => {
                    let backends: [&dyn Backend; 2] = [qnn, &backend];
                    let pieces = coordgen_graph::partition(g, &backends)?;
                    if pieces.iter().any(|p| p.backend == 0) && pieces.len() > 1 {
                        split_subgraphs += 1;
                    }
                    coordgen_graph::compile_partitioned(g, &backends, &weights)?
                }
            };
            // The backend reads repacked copies of these from now on: keep
            // the model resident once, not twice (also while loading).
            for name in backend.repacked_weights() {
                if !released.contains(&name) {
                    file.release_tensor_pages(&name);
                    released.insert(name);
                }
            }
            done += 1;
            progress(LoadProgress {
                stage: "compiling",
                done,
                total,
            });
            Ok(exe)
        };
        let mut executables = Vec::with_capacity(plan.buckets.len());
        for bucket in &plan.buckets {
            executables.push(BucketExecutables {
                width: bucket.width,
                embed: compile(&bucket.embed)?,
                blocks: bucket
                    .blocks
                    .iter()
                    .map(&mut compile)
                    .collect::<Result<_>>()?,
                head_last: compile(&bucket.head_last)?,
                head_all: compile(&bucket.head_all)?,
            });
        }
        let accelerator_report = match (&accelerator, &gpu) {
            (Some(qnn), _) => Some(qnn_report(qnn, cache_entry, split_subgraphs)?),
            (None, Some(gpu)) => Some(gpu_report(gpu, gpu_pieces, split_subgraphs, gpu_compile_ms)),
            (None, None) => None,
        };
        let switching = switch_state(&plan, accelerator.as_ref(), &options)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                path,
                file,
                config,
                plan,
                tokenizer,
                template,
                backend,
                accelerator,
                accelerator_report,
                gpu,
                gpu_lost,
                executables: Mutex::new(executables),
                verify_costs: Mutex::new(None),
                switching: Mutex::new(switching),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn gguf(&self) -> &GgufFile {
        &self.inner.file
    }

    pub fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    pub fn plan(&self) -> &Plan {
        &self.inner.plan
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// Tokens a session can hold.
    pub fn context_length(&self) -> usize {
        self.inner.plan.options.context_length
    }

    /// The verify pass time by width that adaptive drafting uses (ms,
    /// index = rows, index 0 unused), once a speculative request measured it
    /// ([`crate::Session::measure_verify_costs`]) or it was set.
    pub fn verify_costs(&self) -> Option<Vec<f64>> {
        self.inner.verify_costs.lock().ok().and_then(|c| c.clone())
    }

    /// Sets the verify-cost table (e.g. one an earlier run on this machine
    /// and model measured and cached), so that the first speculative request
    /// skips the measurement. A table narrower than a request's widest tree
    /// is measured again then.
    ///
    /// Returns an error unless it has at least one width and every entry
    /// from index 1 on is finite and positive.
    pub fn set_verify_costs(&self, costs: Vec<f64>) -> Result<()> {
        let valid = costs.len() >= 2 && costs[1..].iter().all(|c| c.is_finite() && *c > 0.0);
        if !valid {
            return Err(Error::InvalidOption {
                name: "verify costs",
                message: format!(
                    "{} entries; every one after the first must be a positive time",
                    costs.len()
                ),
            });
        }
        if let Ok(mut cached) = self.inner.verify_costs.lock() {
            *cached = Some(costs);
        }
        Ok(())
    }

    /// Kernel tier and thread count, and the accelerator, for reports.
    pub fn backend_description(&self) -> String {
        let cpu = format!(
            "cpu ({} kernels, {} threads)",
            self.inner.backend.kernels().tier,
            self.inner.backend.threads()
        );
        match &self.inner.accelerator_report {
            None => cpu,
            Some(r) => format!(
                "{} on {} ({} weights, {} graphs) + {cpu}",
                r.backend, r.device, r.weights, r.graphs
            ),
        }
    }

    /// The Vulkan device in use, if any.
    pub fn gpu_device(&self) -> Option<&coordgen_vulkan::DeviceInfo> {
        self.inner.gpu.as_ref().map(|g| g.device())
    }

    /// Treats the GPU as lost, as after a driver reset: the next run that
    /// reaches it fails with a lost device and the CPU takes over.
    pub fn treat_gpu_as_lost(&self) {
        if let Some(gpu) = &self.inner.gpu {
            gpu.mark_lost();
        }
    }

    /// Bytes the GPU's executables copied between the sessions' memory and
    /// their mirrors (zero on unified memory, where sessions live in memory
    /// the GPU binds in place).
    pub fn gpu_bytes_copied(&self) -> u64 {
        self.inner.gpu.as_ref().map_or(0, |g| g.bytes_copied())
    }

    /// Whether the GPU was lost and the CPU runs everything now.
    pub fn gpu_lost(&self) -> bool {
        self.inner
            .gpu_lost
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the accelerator did at load, if there is one.
    pub fn accelerator_report(&self) -> Option<&AcceleratorReport> {
        self.inner.accelerator_report.as_ref()
    }

    /// The accelerator's conversion error per weight.
    pub fn weight_conversion_reports(&self) -> Vec<coordgen_qnn::ConversionReport> {
        self.inner
            .accelerator
            .as_ref()
            .map(|q| q.conversion_reports())
            .unwrap_or_default()
    }

    /// The kernel tier the backend runs (e.g. `avx512vnni`), for reports.
    pub fn kernel_tier(&self) -> Tier {
        self.inner.backend.kernels().tier
    }

    /// Worker threads of the backend.
    pub fn threads(&self) -> usize {
        self.inner.backend.threads()
    }

    /// A new session with an empty KV cache.
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }

    /// Renders a conversation with the model's chat template, ready to be
    /// continued by the assistant.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        self.inner.template.render(messages, true)
    }

    /// Tokenizes rendered chat text: special tokens are parsed, and BOS is
    /// added when the model asks for it.
    pub fn tokenize_chat(&self, rendered: &str) -> Result<Vec<u32>> {
        self.inner.tokenizer.encode(rendered, true, true)
    }

    /// The widest verify bucket (most rows one tree pass may hold).
    pub fn max_verify_width(&self) -> usize {
        self.inner
            .plan
            .options
            .verify_widths
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
    }

    pub(crate) fn new_state(&self) -> SessionState {
        match &self.inner.gpu {
            // Memory the GPU binds in place; plain memory where it cannot lend.
            Some(gpu) => SessionState::new_in(&self.inner.plan, &mut |len| {
                gpu.session_buffer(len)
                    .unwrap_or_else(|_| coordgen_graph::HostBuffer::zeroed(len))
            }),
            None => SessionState::new(&self.inner.plan),
        }
    }

    /// Runs `tokens` (at `positions`) after `past_len` cached tokens and
    /// writes their logits to `logits_out` (one row per token for
    /// [`LogitsWanted::All`], else only the last row).
    ///
    /// Causal batches are split into prefill chunks; a tree batch runs in one
    /// verify bucket and must fit the widest one.
    pub(crate) fn forward(
        &self,
        state: &mut SessionState,
        pass: Pass,
        logits_out: &mut Vec<f32>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        let Pass {
            tokens,
            past_len,
            attend,
            wanted,
        } = pass;
        let inner = &*self.inner;
        let vocab = inner.config.vocab_size;
        if tokens.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: vocab,
            });
        }
        let capacity = self.context_length();
        if past_len + tokens.len() > capacity {
            return Err(Error::ContextOverflow {
                needed: past_len + tokens.len(),
                context: capacity,
            });
        }
        logits_out.clear();
        if matches!(attend, Attend::Causal) && self.scheduled() {
            return self.forward_scheduled(state, tokens, past_len, wanted, logits_out, progress);
        }
        let mut exes = self.executables()?;
        match attend {
            Attend::Causal => {
                let max_chunk = inner
                    .plan
                    .options
                    .prefill_widths
                    .iter()
                    .copied()
                    .max()
                    .unwrap_or(1);
                let mut done = 0;
                while done < tokens.len() {
                    let n = (tokens.len() - done).min(max_chunk);
                    let index = self.bucket_index(BucketKind::Prefill, n)?;
                    let chunk = &tokens[done..done + n];
                    let last_chunk = done + n == tokens.len();
                    let rows = match (wanted, last_chunk) {
                        (LogitsWanted::All, _) => Some(LogitsWanted::All),
                        (LogitsWanted::Last, true) => Some(LogitsWanted::Last),
                        (LogitsWanted::Last, false) => None,
                    };
                    self.run_bucket(
                        &mut exes[index],
                        state,
                        chunk,
                        Positions::Sequential(past_len + done),
                        None,
                        past_len + done,
                        rows,
                        logits_out,
                    )?;
                    done += n;
                    progress(done, tokens.len());
                }
            }
            Attend::Tree(mask) => {
                let n = tokens.len();
                if mask.len() != n * n {
                    return Err(Error::InvalidOption {
                        name: "tree mask",
                        message: format!("{} entries for {n} tokens", mask.len()),
                    });
                }
                let index = self.bucket_index(BucketKind::Verify, n)?;
                let width = inner.plan.buckets[index].width;
                if width < n {
                    return Err(Error::InvalidOption {
                        name: "tree",
                        message: format!("{n} tokens exceed the widest verify bucket ({width})"),
                    });
                }
                let positions = tree_positions(mask, n, past_len);
                let started = Instant::now();
                self.run_bucket(
                    &mut exes[index],
                    state,
                    tokens,
                    Positions::Given(&positions),
                    Some(mask),
                    past_len,
                    Some(wanted),
                    logits_out,
                )?;
                let ended = Instant::now();
                drop(exes);
                if let Ok(mut s) = self.switch_state() {
                    if let Some(r) = s.recording.as_mut() {
                        let ms =
                            |t: Instant| t.saturating_duration_since(r.epoch).as_secs_f64() * 1e3;
                        let pass = crate::schedule::Event::Pass {
                            rows: n,
                            start_ms: ms(started),
                            end_ms: ms(ended),
                        };
                        r.events.push(pass);
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn executables(&self) -> Result<std::sync::MutexGuard<'_, Vec<BucketExecutables>>> {
        self.inner
            .executables
            .lock()
            .map_err(|_| Error::InvalidModel("a previous forward pass panicked".into()))
    }

    /// Writes a prefill chunk's tokens and positions, and embeds them.
    pub(crate) fn begin_chunk(
        &self,
        state: &mut SessionState,
        exes: &mut BucketExecutables,
        tokens: &[u32],
        first_position: usize,
    ) -> Result<()> {
        let b = self.inner.plan.boundaries;
        let bad = || Error::InvalidModel("a session buffer has the wrong size".into());
        let ids = state.boundaries[b.tokens.0]
            .view_mut::<i32>()
            .ok_or_else(bad)?;
        for (dst, &t) in ids.iter_mut().zip(tokens) {
            *dst = t as i32;
        }
        let pos = state.boundaries[b.positions.0]
            .view_mut::<i32>()
            .ok_or_else(bad)?;
        for (i, p) in pos.iter_mut().take(tokens.len()).enumerate() {
            *p = (first_position + i) as i32;
        }
        let params = ExecParams {
            n_valid: tokens.len(),
            past_len: first_position,
        };
        exes.embed.run(state, &params)?;
        Ok(())
    }

    /// Runs a chunk's output head (if its logits are wanted) and keeps them.
    pub(crate) fn finish_chunk(
        &self,
        state: &mut SessionState,
        exes: &mut BucketExecutables,
        params: &ExecParams,
        rows: Option<LogitsWanted>,
        logits_out: &mut Vec<f32>,
    ) -> Result<()> {
        let count = match rows {
            None => return Ok(()),
            Some(LogitsWanted::Last) => {
                exes.head_last.run(state, params)?;
                1
            }
            Some(LogitsWanted::All) => {
                exes.head_all.run(state, params)?;
                params.n_valid
            }
        };
        let vocab = self.inner.config.vocab_size;
        let view = state.boundaries[self.inner.plan.boundaries.logits.0]
            .view::<f32>()
            .ok_or_else(|| Error::InvalidModel("the logits buffer has the wrong size".into()))?;
        logits_out.extend_from_slice(&view[..count * vocab]);
        Ok(())
    }

    /// Runs block `block` of a prefill chunk (`rows` rows at rows 0.. of
    /// its input buffer) as sub-chunks on verify bucket `g2`, each with a
    /// causal mask; returns the number of runs. Batch invariance makes the
    /// rows come out as one G1 run would give them.
    pub(crate) fn run_block_on_g2(
        &self,
        state: &mut SessionState,
        exes: &mut [BucketExecutables],
        g2: usize,
        block: usize,
        rows: usize,
        past_len: usize,
    ) -> Result<usize> {
        let plan = &self.inner.plan;
        let b = plan.boundaries;
        let d = self.inner.config.d_model;
        let w2 = exes[g2].width;
        let (input, output) = (b.hidden[block % 2].0, b.hidden[(block + 1) % 2].0);
        let bad = || Error::InvalidModel("a session buffer has the wrong size".into());
        let chunk_in: Vec<f32> =
            state.boundaries[input].view::<f32>().ok_or_else(bad)?[..rows * d].to_vec();
        let positions: Vec<i32> = state.boundaries[b.positions.0]
            .view::<i32>()
            .ok_or_else(bad)?[..rows]
            .to_vec();
        let mut chunk_out = vec![0f32; rows * d];
        {
            let mask = state.boundaries[b.tree_mask.0].as_bytes_mut();
            let cells = mask.get_mut(..w2 * w2).ok_or_else(bad)?;
            for i in 0..w2 {
                for j in 0..w2 {
                    cells[i * w2 + j] = u8::from(j <= i);
                }
            }
        }
        let mut runs = 0;
        for start in (0..rows).step_by(w2.max(1)) {
            let m = (rows - start).min(w2);
            state.boundaries[input].view_mut::<f32>().ok_or_else(bad)?[..m * d]
                .copy_from_slice(&chunk_in[start * d..(start + m) * d]);
            state.boundaries[b.positions.0]
                .view_mut::<i32>()
                .ok_or_else(bad)?[..m]
                .copy_from_slice(&positions[start..start + m]);
            let params = ExecParams {
                n_valid: m,
                past_len: past_len + start,
            };
            exes[g2].blocks[block].run(state, &params)?;
            chunk_out[start * d..(start + m) * d]
                .copy_from_slice(&state.boundaries[output].view::<f32>().ok_or_else(bad)?[..m * d]);
            runs += 1;
        }
        // The next block reads the whole chunk's rows and positions.
        state.boundaries[output].view_mut::<f32>().ok_or_else(bad)?[..rows * d]
            .copy_from_slice(&chunk_out);
        state.boundaries[input].view_mut::<f32>().ok_or_else(bad)?[..rows * d]
            .copy_from_slice(&chunk_in);
        state.boundaries[b.positions.0]
            .view_mut::<i32>()
            .ok_or_else(bad)?[..rows]
            .copy_from_slice(&positions);
        Ok(runs)
    }

    /// A causal pass of at most the verify width, on verify bucket `g2`
    /// (a lower-triangular tree mask).
    pub(crate) fn run_causal_on_g2(
        &self,
        state: &mut SessionState,
        g2: usize,
        tokens: &[u32],
        past_len: usize,
        wanted: LogitsWanted,
        logits_out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = tokens.len();
        let mask: Vec<u8> = (0..n * n).map(|k| u8::from(k % n <= k / n)).collect();
        let mut exes = self.executables()?;
        self.run_bucket(
            &mut exes[g2],
            state,
            tokens,
            Positions::Sequential(past_len),
            Some(&mask),
            past_len,
            Some(wanted),
            logits_out,
        )
    }

    fn bucket_index(&self, kind: BucketKind, n: usize) -> Result<usize> {
        let plan = &self.inner.plan;
        let bucket: &Bucket = plan
            .bucket_for(kind, n)
            .ok_or_else(|| Error::InvalidOption {
                name: "buckets",
                message: format!("no {kind:?} bucket"),
            })?;
        plan.buckets
            .iter()
            .position(|b| std::ptr::eq(b, bucket))
            .ok_or_else(|| Error::InvalidModel("bucket lookup failed".into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_bucket(
        &self,
        exes: &mut BucketExecutables,
        state: &mut SessionState,
        tokens: &[u32],
        positions: Positions,
        tree_mask: Option<&[u8]>,
        past_len: usize,
        rows: Option<LogitsWanted>,
        logits_out: &mut Vec<f32>,
    ) -> Result<()> {
        let plan = &self.inner.plan;
        let b = plan.boundaries;
        let n = tokens.len();
        let io_error =
            |what: &str| Error::InvalidModel(format!("session buffer {what} has the wrong size"));
        {
            let ids = state.boundaries[b.tokens.0]
                .view_mut::<i32>()
                .ok_or_else(|| io_error("tokens"))?;
            for (dst, &t) in ids.iter_mut().zip(tokens) {
                *dst = t as i32;
            }
            let pos = state.boundaries[b.positions.0]
                .view_mut::<i32>()
                .ok_or_else(|| io_error("positions"))?;
            match positions {
                Positions::Sequential(first) => {
                    for (i, p) in pos[..n].iter_mut().enumerate() {
                        *p = (first + i) as i32;
                    }
                }
                Positions::Given(given) => pos[..n].copy_from_slice(given),
            }
        }
        if let Some(mask) = tree_mask {
            // The subgraph sees the mask as [W, W]: lay it out at the bucket width.
            let width = exes.width;
            let dst = state.boundaries[b.tree_mask.0].as_bytes_mut();
            dst[..width * width].fill(0);
            for i in 0..n {
                dst[i * width..i * width + n].copy_from_slice(&mask[i * n..(i + 1) * n]);
            }
        }
        let params = ExecParams {
            n_valid: n,
            past_len,
        };
        exes.embed.run(state, &params)?;
        for block in &mut exes.blocks {
            block.run(state, &params)?;
        }
        let vocab = self.inner.config.vocab_size;
        let logits = match rows {
            None => return Ok(()),
            Some(LogitsWanted::Last) => {
                exes.head_last.run(state, &params)?;
                1
            }
            Some(LogitsWanted::All) => {
                exes.head_all.run(state, &params)?;
                n
            }
        };
        let view = state.boundaries[b.logits.0]
            .view::<f32>()
            .ok_or_else(|| io_error("logits"))?;
        logits_out.extend_from_slice(&view[..logits * vocab]);
        Ok(())
    }
}

/// Position of each tree row: its depth below the cached context.
pub(crate) fn tree_positions(mask: &[u8], n: usize, past_len: usize) -> Vec<i32> {
    (0..n)
        .map(|i| {
            let ancestors = (0..n).filter(|&j| j != i && mask[i * n + j] != 0).count();
            (past_len + ancestors) as i32
        })
        .collect()
}

/// Reads one byte per page of the tensor data so the OS maps it in now.
fn prefault(file: &GgufFile, progress: &mut impl FnMut(LoadProgress)) {
    let bytes = file.bytes();
    let total = bytes.len() as u64;
    let step = 4096;
    let report = 8 << 20;
    let started = Instant::now();
    let mut sum = 0u8;
    for (i, chunk) in bytes.chunks(report).enumerate() {
        for page in chunk.iter().step_by(step) {
            sum = sum.wrapping_add(*page);
        }
        progress(LoadProgress {
            stage: "mapping weights",
            done: ((i + 1) * report).min(bytes.len()) as u64,
            total,
        });
    }
    std::hint::black_box((sum, started));
}

/// Which graphs each block swaps, and the starting residency: with one
/// graph per block, only the prefill graphs stay loaded.
fn switch_state(
    plan: &Plan,
    qnn: Option<&coordgen_qnn::QnnBackend>,
    options: &EngineOptions,
) -> Result<crate::progressive::SwitchState> {
    use crate::progressive::{BlockGroups, Switching};
    use crate::schedule::GraphKind;
    let n_blocks = plan.buckets.first().map_or(0, |b| b.blocks.len());
    let mut groups = vec![BlockGroups::default(); n_blocks];
    if let Some(qnn) = qnn {
        // Only saved groups can be unloaded and loaded back.
        if qnn.groups().iter().all(|g| g.is_saved()) {
            for bucket in &plan.buckets {
                for (b, block) in bucket.blocks.iter().enumerate() {
                    if let (Some(group), Some(slot)) = (qnn.group(&block.name), groups.get_mut(b)) {
                        match bucket.kind {
                            BucketKind::Prefill => slot.g1.push(group),
                            BucketKind::Verify => slot.g2.push(group),
                        }
                    }
                }
            }
        }
    }
    if options.switching != Switching::BothResident {
        for g in &groups {
            for group in &g.g2 {
                group.unload()?;
            }
        }
    }
    Ok(crate::progressive::SwitchState {
        mode: options.switching,
        start_override: options.switch_from,
        resident: vec![GraphKind::G1; n_blocks],
        groups,
        profile: None,
        recording: None,
    })
}

/// Starts the QNN backend: loads the library, sets the SoC, and opens the
/// cached context binary of this model and plan when there is one.
fn start_qnn(
    options: &QnnOptions,
    file: &GgufFile,
    plan: &Plan,
) -> Result<(coordgen_qnn::QnnBackend, Option<PathBuf>)> {
    let library = coordgen_qnn::Library::load(&options.folder)?;
    let runtime = coordgen_qnn::Runtime::new(&library, options.soc)?;
    let Some(dir) = &options.cache_dir else {
        let backend = coordgen_qnn::QnnBackend::new(&runtime, options.weights)?;
        return Ok((backend.with_scope(options.graphs), None));
    };
    let key = qnn_cache_key(file, plan, &runtime, options)?;
    let entry = dir.join(&key);
    let backend = match coordgen_qnn::QnnBackend::from_cache(&runtime, options.weights, dir, &key)?
    {
        Some(cached) => cached,
        None => coordgen_qnn::QnnBackend::new(&runtime, options.weights)?,
    };
    Ok((backend.with_scope(options.graphs), Some(entry)))
}

/// The cache key of a compiled plan: a hash of the model file, the plan,
/// the SoC, the weight format and the library build.
fn qnn_cache_key(
    file: &GgufFile,
    plan: &Plan,
    runtime: &coordgen_qnn::Runtime,
    options: &QnnOptions,
) -> Result<String> {
    use std::hash::{Hash, Hasher};
    let mut model = std::collections::hash_map::DefaultHasher::new();
    file.bytes().hash(&mut model);
    let mut plan_hash = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&plan.options)
        .unwrap_or_default()
        .hash(&mut plan_hash);
    serde_json::to_string(&plan.config)
        .unwrap_or_default()
        .hash(&mut plan_hash);
    let rest = coordgen_qnn::cache_key_parts(runtime, options.weights, options.graphs)?;
    let rest: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(format!(
        "{:016x}-{:016x}-{rest}",
        model.finish(),
        plan_hash.finish()
    ))
}

/// The Vulkan backend's load report.
/// `binary_bytes` holds the weight bytes uploaded, `build_ms` the compile
/// time (weight uploads and pipeline creation included).
fn gpu_report(
    gpu: &coordgen_vulkan::VulkanBackend,
    graphs: usize,
    split_subgraphs: usize,
    compile_ms: f64,
) -> AcceleratorReport {
    let device = gpu.device();
    AcceleratorReport {
        backend: "vulkan",
        device: format!(
            "{} ({}, Vulkan {})",
            device.name, device.kind, device.api_version
        ),
        weights: "as in the file",
        scope: "every supported op",
        graphs,
        split_subgraphs,
        build_ms: compile_ms,
        binary_bytes: gpu.weight_bytes(),
        ..Default::default()
    }
}

/// The accelerator's load report; writes the cache entry after a miss.
fn qnn_report(
    qnn: &coordgen_qnn::QnnBackend,
    cache_entry: Option<PathBuf>,
    split_subgraphs: usize,
) -> Result<AcceleratorReport> {
    let times = qnn.compile_times();
    let runtime = qnn.runtime();
    // Graphs from a cache entry load now, not at the first request.
    let load = qnn.load_all()?;
    let mut binary_bytes = 0;
    let mut save_ms = 0.0;
    if let Some(entry) = &cache_entry {
        if !qnn.from_cached_binary() {
            let started = Instant::now();
            let dir = entry.parent().unwrap_or(Path::new("."));
            let key = entry
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            binary_bytes = qnn.save_cache(dir, key)?;
            save_ms = started.elapsed().as_secs_f64() * 1e3;
        }
    }
    let worst_weight_error = qnn
        .conversion_reports()
        .into_iter()
        .max_by(|a, b| a.relative_rms.total_cmp(&b.relative_rms))
        .map(|r| (r.name, r.relative_rms));
    Ok(AcceleratorReport {
        backend: "qnn",
        device: runtime.soc().to_string(),
        library_build: runtime.library().build_id()?,
        weights: qnn.weight_format().name(),
        scope: qnn.scope().name(),
        graphs: qnn.graph_count(),
        split_subgraphs,
        build_ms: times.build.as_secs_f64() * 1e3,
        finalize_ms: times.finalize.as_secs_f64() * 1e3,
        load_ms: load.as_secs_f64() * 1e3,
        cache_hit: qnn.from_cached_binary(),
        cache_entry,
        binary_bytes,
        save_ms,
        worst_weight_error,
    })
}
