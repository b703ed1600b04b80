//! The QNN backend of the graph compiler: it lowers pieces of IR subgraphs
//! (norms, matmuls, residual adds, the SiLU gate) into static HTP graphs
//! and runs them over the session's own buffers.
//!
//! A lowered graph takes f32 inputs and gives f32 outputs, the IR's
//! activation type, so its client buffers point straight into the session's
//! boundary buffers and arena (no copy on the way in or out). Inside, the
//! graph casts to fp16, the HTP's float type, and back.

use crate::exec::QnnExecutable;
use crate::graph::{DataType, GraphBuilder, IoTensor};
use crate::group::GraphGroup;
use crate::lower::{file_weights, io_plan, GraphScope, Lowering, ZeroWeights};
use crate::runtime::{Context, Runtime};
use crate::weights::{self, ConversionReport, WeightFormat};
use crate::{Error, Result};
use coordgen_graph::{
    DType, Executable, Op, Piece, Subgraph, SubgraphRole, TensorId, TensorKind, WeightSource,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a context-binary cache key must cover besides the model and plan:
/// the SoC, the weight format and the library build.
pub fn cache_key_parts(
    runtime: &Runtime,
    format: WeightFormat,
    scope: GraphScope,
) -> Result<String> {
    Ok(format!(
        "{}-{}-{}-{}",
        runtime.soc().name(),
        format.name(),
        scope.name(),
        runtime.library().build_id()?
    ))
}

/// Time spent building and finalizing graphs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompileTimes {
    pub graphs: usize,
    pub build: Duration,
    pub finalize: Duration,
}

/// Runs the linear parts of layers on Qualcomm's HTP (the NPU of Snapdragon
/// phones; on x86-64, the library's functional simulator).
pub struct QnnBackend {
    runtime: Arc<Runtime>,
    format: WeightFormat,
    scope: GraphScope,
    /// Answers of the library's op validation, by op shape and types.
    validated: Mutex<HashMap<String, bool>>,
    /// Conversion error of each converted weight, by name.
    reports: Mutex<Vec<ConversionReport>>,
    times: Mutex<CompileTimes>,
    /// Graph names in use (each must be unique), in compile order.
    names: Mutex<Vec<String>>,
    /// One group (and context) per subgraph of the plan, in compile order.
    groups: Mutex<Vec<Arc<GraphGroup>>>,
    /// Whether the groups came from a cached entry (graphs are then
    /// retrieved, never built or finalized).
    from_cache: bool,
}

/// The manifest of a cache entry (a folder holding one binary per group).
const MANIFEST: &str = "manifest.json";

/// The group of a piece: the subgraph it came from (`prefill32/block0#1`
/// belongs to `prefill32/block0`).
fn group_name(piece_graph: &str) -> &str {
    piece_graph.split('#').next().unwrap_or(piece_graph)
}

fn io_json(list: &[IoTensor]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "name": t.name,
                    "dtype": match t.data_type {
                        DataType::F16 => "f16",
                        _ => "f32",
                    },
                    "dims": t.dims,
                })
            })
            .collect(),
    )
}

fn io_from_json(value: &serde_json::Value) -> Option<Vec<IoTensor>> {
    value
        .as_array()?
        .iter()
        .map(|t| {
            Some(IoTensor {
                id: u32::try_from(t.get("id")?.as_u64()?).ok()?,
                name: t.get("name")?.as_str()?.to_string(),
                data_type: match t.get("dtype")?.as_str()? {
                    "f16" => DataType::F16,
                    "f32" => DataType::F32,
                    _ => return None,
                },
                dims: t
                    .get("dims")?
                    .as_array()?
                    .iter()
                    .map(|d| d.as_u64().and_then(|d| u32::try_from(d).ok()))
                    .collect::<Option<Vec<u32>>>()?,
            })
        })
        .collect()
}

impl QnnBackend {
    /// A backend that builds and finalizes its graphs (one new context per
    /// subgraph of the plan).
    pub fn new(runtime: &Arc<Runtime>, format: WeightFormat) -> Result<QnnBackend> {
        Ok(Self::with_groups(runtime, format, Vec::new(), false))
    }

    fn with_groups(
        runtime: &Arc<Runtime>,
        format: WeightFormat,
        groups: Vec<Arc<GraphGroup>>,
        from_cache: bool,
    ) -> QnnBackend {
        QnnBackend {
            runtime: runtime.clone(),
            format,
            scope: GraphScope::Linear,
            validated: Mutex::new(HashMap::new()),
            reports: Mutex::new(Vec::new()),
            times: Mutex::new(CompileTimes::default()),
            names: Mutex::new(Vec::new()),
            groups: Mutex::new(groups),
            from_cache,
        }
    }

    /// A backend over the cache entry `key` in `dir`, or `Ok(None)` when
    /// there is no such entry. The key must name everything the graphs
    /// depend on: model, plan, SoC, weight format, scope and library build
    /// (see [`cache_key_parts`]). Nothing is loaded yet ([`Self::load_all`]
    /// or the first run does it). Pieces compiled later must come in the
    /// order they came when the entry was written, as graphs are found by
    /// their names.
    pub fn from_cache(
        runtime: &Arc<Runtime>,
        format: WeightFormat,
        dir: &Path,
        key: &str,
    ) -> Result<Option<QnnBackend>> {
        let folder = dir.join(key);
        let json = folder.join(MANIFEST);
        if !json.is_file() {
            return Ok(None);
        }
        let bad = |message: String| Error::Cache {
            path: json.clone(),
            message,
        };
        let text = std::fs::read_to_string(&json).map_err(|e| bad(e.to_string()))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut groups = Vec::new();
        for g in manifest
            .get("groups")
            .and_then(|g| g.as_array())
            .ok_or_else(|| bad("no group list".into()))?
        {
            let parsed = (|| {
                let name = g.get("name")?.as_str()?.to_string();
                let file = g.get("file")?.as_str()?.to_string();
                let graphs = g
                    .get("graphs")?
                    .as_array()?
                    .iter()
                    .map(|graph| {
                        Some((
                            graph.get("name")?.as_str()?.to_string(),
                            (
                                io_from_json(graph.get("inputs")?)?,
                                io_from_json(graph.get("outputs")?)?,
                            ),
                        ))
                    })
                    .collect::<Option<Vec<_>>>()?;
                Some((name, file, graphs))
            })();
            let (name, file, graphs) =
                parsed.ok_or_else(|| bad("a malformed group entry".into()))?;
            // A file name of our own making: no path may leave the entry.
            if file.contains('/') || file.contains("..") {
                return Err(bad(format!("a group file named {file:?}")));
            }
            groups.push(GraphGroup::cached(
                &name,
                runtime,
                folder.join(file),
                graphs,
            ));
        }
        Ok(Some(Self::with_groups(runtime, format, groups, true)))
    }

    /// Writes every group's context binary and the manifest of their graphs
    /// as cache entry `key` in `dir` (the manifest last: it marks the entry
    /// complete). Returns the binaries' total size in bytes.
    pub fn save_cache(&self, dir: &Path, key: &str) -> Result<u64> {
        let folder = dir.join(key);
        let io_error = |path: &Path, e: std::io::Error| Error::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&folder).map_err(|e| io_error(&folder, e))?;
        let mut total = 0;
        let mut list = Vec::new();
        for (i, group) in self.groups().iter().enumerate() {
            let file = format!("group{i}.bin");
            total += group.save(&folder.join(&file))?;
            let graphs: Vec<serde_json::Value> = group
                .graph_names()
                .iter()
                .filter_map(|name| {
                    let (inputs, outputs) = group.io(name)?;
                    Some(serde_json::json!({
                        "name": name,
                        "inputs": io_json(&inputs),
                        "outputs": io_json(&outputs),
                    }))
                })
                .collect();
            list.push(serde_json::json!({
                "name": group.name(),
                "file": file,
                "graphs": graphs,
            }));
        }
        let manifest = serde_json::json!({ "key": key, "groups": list });
        let json = folder.join(MANIFEST);
        let tmp = json.with_extension("json.tmp");
        std::fs::write(&tmp, manifest.to_string()).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &json).map_err(|e| io_error(&json, e))?;
        Ok(total)
    }

    /// Every group, in compile order.
    pub fn groups(&self) -> Vec<Arc<GraphGroup>> {
        self.groups.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The group of subgraph `name` (e.g. `verify16/block3`), if any.
    pub fn group(&self, name: &str) -> Option<Arc<GraphGroup>> {
        self.groups().into_iter().find(|g| g.name() == name)
    }

    /// Loads every group not resident yet; returns the time it took.
    pub fn load_all(&self) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for group in self.groups() {
            total += group.load()?;
        }
        Ok(total)
    }

    /// Runs `scope` of each layer on the HTP (set before compiling).
    pub fn with_scope(mut self, scope: GraphScope) -> QnnBackend {
        self.scope = scope;
        self
    }

    pub fn scope(&self) -> GraphScope {
        self.scope
    }

    /// Graphs compiled or retrieved so far.
    pub fn graph_count(&self) -> usize {
        self.names.lock().map(|n| n.len()).unwrap_or(0)
    }

    /// Whether the graphs come from a cached context binary.
    pub fn from_cached_binary(&self) -> bool {
        self.from_cache
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// The conversion error of every weight converted so far.
    pub fn conversion_reports(&self) -> Vec<ConversionReport> {
        self.reports.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn compile_times(&self) -> CompileTimes {
        self.times.lock().map(|t| *t).unwrap_or_default()
    }

    /// Whether the library accepts `op` at the shapes it has in `graph`:
    /// lowers it alone into a scratch graph (validation of each node
    /// included), cached by shape.
    fn library_accepts(&self, op: &Op, graph: &Subgraph) -> bool {
        let key = match op_key(op, graph, self.format) {
            Some(k) => k,
            None => return false,
        };
        if let Some(&known) = self
            .validated
            .lock()
            .ok()
            .and_then(|v| v.get(&key).copied())
            .as_ref()
        {
            return known;
        }
        let accepted = self.probe(op, graph).is_ok();
        if let Ok(mut v) = self.validated.lock() {
            v.insert(key, accepted);
        }
        accepted
    }

    /// Why the library rejects `op` at its shapes in `graph`, if it does:
    /// builds `op` alone with zero weights in a throwaway context (never
    /// finalized), so every node goes through the library's validation.
    pub fn probe(&self, op: &Op, graph: &Subgraph) -> Result<()> {
        let context = Context::new(&self.runtime)?;
        let mut builder = GraphBuilder::new(&context, "probe")?;
        let mut inputs = Vec::new();
        for t in op.inputs() {
            let weight = matches!(
                graph.tensor(t).map(|d| &d.kind),
                Some(TensorKind::Weight { .. })
            );
            if !weight && !inputs.contains(&t) {
                inputs.push(t);
            }
        }
        let piece = Piece {
            backend: 0,
            graph: Subgraph {
                nodes: vec![op.clone()],
                ..graph.clone()
            },
            inputs,
            outputs: vec![op.output()],
        };
        let plan = io_plan(&piece)?;
        Lowering::new(&mut builder, graph, self.format).piece(&piece, &plan, &ZeroWeights(graph))
    }

    fn unique_name(&self, name: &str) -> String {
        let base: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Ok(mut names) = self.names.lock() else {
            return base;
        };
        let mut candidate = base.clone();
        let mut n = 1;
        while names.contains(&candidate) {
            n += 1;
            candidate = format!("{base}_{n}");
        }
        names.push(candidate.clone());
        candidate
    }

    /// The group of a piece, created (and resident) when building.
    fn group_for(&self, piece: &Piece) -> Result<Arc<GraphGroup>> {
        let name = group_name(&piece.graph.name);
        if let Some(group) = self.group(name) {
            return Ok(group);
        }
        if self.from_cache {
            return Err(Error::Lowering {
                graph: piece.graph.name.clone(),
                message: format!("the cache entry has no group {name}"),
            });
        }
        let group = GraphGroup::build(name, &self.runtime)?;
        if let Ok(mut groups) = self.groups.lock() {
            groups.push(group.clone());
        }
        Ok(group)
    }

    /// Lowers and finalizes a piece (or, from a cache entry, finds it).
    pub fn compile_piece_graph(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> Result<QnnExecutable> {
        let graph = &piece.graph;
        let started = Instant::now();
        let name = self.unique_name(&graph.name);
        let plan = io_plan(piece)?;
        let group = self.group_for(piece)?;
        if self.from_cache {
            return QnnExecutable::new(graph.name.clone(), group, name, plan);
        }
        let mut builder = GraphBuilder::new(&group.context()?, &name)?;
        Lowering::new(&mut builder, graph, self.format).piece(
            piece,
            &plan,
            &file_weights(weights, &self.reports),
        )?;
        let built = started.elapsed();
        let compiled = builder.finalize()?;
        let finalized = started.elapsed() - built;
        if let Ok(mut t) = self.times.lock() {
            t.graphs += 1;
            t.build += built;
            t.finalize += finalized;
        }
        group.add(compiled);
        QnnExecutable::new(graph.name.clone(), group, name, plan)
    }
}

/// Cache key of an op's validation: its kind, shapes and weight format.
fn op_key(op: &Op, graph: &Subgraph, format: WeightFormat) -> Option<String> {
    let shape = |t: TensorId| {
        graph
            .tensor(t)
            .map(|d| format!("{:?}{:?}", d.dtype, d.shape))
    };
    let mut key = format!("{}:{}", op.name(), format.name());
    for t in op.inputs() {
        key.push_str(&shape(t)?);
    }
    key.push_str(&shape(op.output())?);
    Some(key)
}

impl coordgen_graph::Backend for QnnBackend {
    fn name(&self) -> &'static str {
        "qnn"
    }

    /// Norms, matmuls (over any GGUF weight type, converted), residual adds
    /// and the SiLU gate of the transformer layers, on f32 activations,
    /// when the library validates the lowered nodes at their shapes.
    /// Embedding lookups, RoPE, attention over the growing KV cache and the
    /// output head stay on the CPU, as in the paper: the head's matrix (the
    /// vocabulary by the model width) would be copied into every bucket's
    /// graph, a third of the binary for a small model.
    fn supports(&self, op: &Op, graph: &Subgraph) -> bool {
        if !matches!(graph.role, SubgraphRole::Layers { .. }) {
            return false;
        }
        // Activations are f32; positions, the tree mask and the cache reach
        // the graph through per-run inputs.
        let f32_io = op
            .inputs()
            .into_iter()
            .chain([op.output()])
            .filter(|&t| {
                !matches!(
                    graph.tensor(t).map(|d| &d.kind),
                    Some(TensorKind::Weight { .. } | TensorKind::KvCache { .. })
                ) && !matches!(*op, Op::Rope { positions, .. } if positions == t)
                    && !matches!(*op, Op::Attention { tree_mask: Some(m), .. } if m == t)
            })
            .all(|t| graph.tensor(t).is_some_and(|d| d.dtype == DType::F32));
        let full_layer = self.scope == GraphScope::FullLayer;
        let kind_ok = match *op {
            Op::RmsNorm { .. } | Op::Add { .. } | Op::SiluMul { .. } => true,
            Op::Rope { head_dim, .. } => full_layer && head_dim % 2 == 0,
            Op::Attention {
                n_heads,
                n_kv_heads,
                ..
            } => full_layer && n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            Op::MatMul { w, .. } => graph.tensor(w).is_some_and(|d| {
                weights::convertible(d.dtype)
                    && d.shape.len() == 2
                    && matches!(d.kind, TensorKind::Weight { .. })
            }),
            _ => false,
        };
        kind_ok && f32_io && self.library_accepts(op, graph)
    }

    fn compile(
        &self,
        graph: &Subgraph,
        weights: &dyn WeightSource,
    ) -> std::result::Result<Box<dyn Executable>, coordgen_graph::Error> {
        let pieces = coordgen_graph::partition(graph, &[self])?;
        match pieces.as_slice() {
            [piece] => self.compile_piece(piece, weights),
            _ => Err(coordgen_graph::Error::NoBackend {
                op: "(some op)",
                graph: graph.name.clone(),
                backends: vec!["qnn"],
            }),
        }
    }

    fn compile_piece(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> std::result::Result<Box<dyn Executable>, coordgen_graph::Error> {
        Ok(Box::new(self.compile_piece_graph(piece, weights)?))
    }
}

impl From<Error> for coordgen_graph::Error {
    fn from(e: Error) -> Self {
        coordgen_graph::Error::Backend {
            backend: "qnn",
            cause: Box::new(e),
        }
    }
}
