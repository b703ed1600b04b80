//! The QNN backend of the graph compiler: it lowers pieces of IR subgraphs
//! (norms, matmuls, residual adds, the SiLU gate) into static HTP graphs
//! and runs them over the session's own buffers.
//!
//! A lowered graph takes f32 inputs and gives f32 outputs, the IR's
//! activation type, so its client buffers point straight into the session's
//! boundary buffers and arena (no copy on the way in or out). Inside, the
//! graph casts to fp16, the HTP's float type, and back.

use crate::graph::{DataType, Graph, GraphBuilder, IoTensor, Param, Role, Scalar, TensorRef};
use crate::runtime::{Context, Runtime};
use crate::weights::{self, ConversionReport, WeightFormat};
use crate::{Error, Result};
use coordgen_graph::{
    DType, ExecParams, Executable, Op, Piece, SessionState, Subgraph, SubgraphRole, TensorId,
    TensorKind, WeightSource,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a context-binary cache key must cover besides the model and plan:
/// the SoC, the weight format and the library build.
pub fn cache_key_parts(runtime: &Runtime, format: WeightFormat) -> Result<String> {
    Ok(format!(
        "{}-{}-{}",
        runtime.soc().name(),
        format.name(),
        runtime.library().build_id()?
    ))
}

/// Where an input or output of a lowered piece lives in the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Boundary(usize),
    Arena(usize),
}

/// One input or output binding: the place and its byte size.
#[derive(Clone, Copy, Debug)]
struct Binding {
    place: Place,
    bytes: usize,
}

impl Binding {
    fn range(&self) -> (Place, usize, usize) {
        match self.place {
            Place::Boundary(id) => (Place::Boundary(id), 0, self.bytes),
            Place::Arena(offset) => (Place::Arena(0), offset, offset + self.bytes),
        }
    }

    fn overlaps(&self, other: &Binding) -> bool {
        let (a, s0, e0) = self.range();
        let (b, s1, e1) = other.range();
        a == b && s0 < e1 && s1 < e0
    }
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
    /// Every graph of one backend lives in one context, so that one context
    /// binary holds a whole compiled plan.
    context: Arc<Context>,
    format: WeightFormat,
    /// Answers of the library's op validation, by op shape and types.
    validated: Mutex<HashMap<String, bool>>,
    /// Conversion error of each converted weight, by name.
    reports: Mutex<Vec<ConversionReport>>,
    times: Mutex<CompileTimes>,
    /// Graph names in use in the context (each must be unique).
    names: Mutex<Vec<String>>,
    /// Inputs and outputs of every graph, by name: those built here, or
    /// those of a context loaded from a cached binary.
    graphs: Mutex<HashMap<String, GraphIo>>,
    /// Whether the context came from a cached binary (graphs are then
    /// retrieved, never built or finalized).
    from_cache: bool,
    /// Time spent loading the cached binary.
    load_time: Duration,
}

/// A graph's inputs and outputs, as executing it needs them.
type GraphIo = (Vec<IoTensor>, Vec<IoTensor>);

/// The file names of a context-binary cache entry.
fn cache_paths(dir: &Path, key: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{key}.bin")),
        dir.join(format!("{key}.json")),
    )
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
    /// A backend that builds and finalizes its graphs in a new context.
    pub fn new(runtime: &Arc<Runtime>, format: WeightFormat) -> Result<QnnBackend> {
        Ok(Self::with_context(
            runtime,
            Context::new(runtime)?,
            format,
            HashMap::new(),
            false,
            Duration::ZERO,
        ))
    }

    fn with_context(
        runtime: &Arc<Runtime>,
        context: Arc<Context>,
        format: WeightFormat,
        graphs: HashMap<String, GraphIo>,
        from_cache: bool,
        load_time: Duration,
    ) -> QnnBackend {
        QnnBackend {
            runtime: runtime.clone(),
            context,
            format,
            validated: Mutex::new(HashMap::new()),
            reports: Mutex::new(Vec::new()),
            times: Mutex::new(CompileTimes::default()),
            names: Mutex::new(Vec::new()),
            graphs: Mutex::new(graphs),
            from_cache,
            load_time,
        }
    }

    /// A backend over the context binary cached as `key` in `dir`, or
    /// `Ok(None)` when there is no such entry. The key must name everything
    /// the graphs depend on: model, plan, SoC, weight format and library
    /// build (see [`cache_key_parts`]). Pieces compiled later must come in
    /// the order they came when the entry was written, as graphs are found
    /// by their names.
    pub fn from_cache(
        runtime: &Arc<Runtime>,
        format: WeightFormat,
        dir: &Path,
        key: &str,
    ) -> Result<Option<QnnBackend>> {
        let (bin, json) = cache_paths(dir, key);
        if !bin.is_file() || !json.is_file() {
            return Ok(None);
        }
        let bad = |message: String| Error::Cache {
            path: json.clone(),
            message,
        };
        let text = std::fs::read_to_string(&json).map_err(|e| bad(e.to_string()))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut graphs = HashMap::new();
        for g in manifest
            .get("graphs")
            .and_then(|g| g.as_array())
            .ok_or_else(|| bad("no graph list".into()))?
        {
            let entry = (|| {
                Some((
                    g.get("name")?.as_str()?.to_string(),
                    io_from_json(g.get("inputs")?)?,
                    io_from_json(g.get("outputs")?)?,
                ))
            })();
            let (name, inputs, outputs) =
                entry.ok_or_else(|| bad("a malformed graph entry".into()))?;
            graphs.insert(name, (inputs, outputs));
        }
        let binary = std::fs::read(&bin).map_err(|e| Error::Cache {
            path: bin.clone(),
            message: e.to_string(),
        })?;
        let started = Instant::now();
        let context = Context::from_binary(runtime, &binary)?;
        let load_time = started.elapsed();
        Ok(Some(Self::with_context(
            runtime, context, format, graphs, true, load_time,
        )))
    }

    /// Writes the context binary with every graph compiled so far, and the
    /// manifest of their inputs and outputs, as cache entry `key` in `dir`.
    /// Returns the binary's size in bytes.
    pub fn save_cache(&self, dir: &Path, key: &str) -> Result<u64> {
        let (bin, json) = cache_paths(dir, key);
        let io_error = |path: &Path, e: std::io::Error| Error::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let binary = self.context.binary()?;
        let names = self.names.lock().map(|n| n.clone()).unwrap_or_default();
        let graphs = self.graphs.lock().map(|g| g.clone()).unwrap_or_default();
        let list: Vec<serde_json::Value> = names
            .iter()
            .filter_map(|name| {
                let (inputs, outputs) = graphs.get(name)?;
                Some(serde_json::json!({
                    "name": name,
                    "inputs": io_json(inputs),
                    "outputs": io_json(outputs),
                }))
            })
            .collect();
        let manifest = serde_json::json!({ "key": key, "graphs": list });
        // Write to temporary names and rename, so a reader never sees half
        // an entry (the manifest goes last: it marks the entry complete).
        let tmp_bin = bin.with_extension("bin.tmp");
        std::fs::write(&tmp_bin, &binary).map_err(|e| io_error(&tmp_bin, e))?;
        std::fs::rename(&tmp_bin, &bin).map_err(|e| io_error(&bin, e))?;
        let tmp_json = json.with_extension("json.tmp");
        std::fs::write(&tmp_json, manifest.to_string()).map_err(|e| io_error(&tmp_json, e))?;
        std::fs::rename(&tmp_json, &json).map_err(|e| io_error(&json, e))?;
        Ok(binary.len() as u64)
    }

    /// Graphs compiled or retrieved so far.
    pub fn graph_count(&self) -> usize {
        self.names.lock().map(|n| n.len()).unwrap_or(0)
    }

    /// Whether the graphs come from a cached context binary.
    pub fn from_cached_binary(&self) -> bool {
        self.from_cache
    }

    /// Time spent loading the cached context binary (zero when built).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.context
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
        let mut lowering = Lowering::new(&mut builder, graph, self.format);
        for t in op.inputs() {
            if !matches!(
                graph.tensor(t).map(|d| &d.kind),
                Some(TensorKind::Weight { .. })
            ) {
                lowering.ensure_input(t)?;
            }
        }
        lowering.op(op, &ZeroWeights(graph))?;
        Ok(())
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

    /// Lowers and finalizes a piece.
    pub fn compile_piece_graph(
        &self,
        piece: &Piece,
        weights: &dyn WeightSource,
    ) -> Result<QnnExecutable> {
        let graph = &piece.graph;
        let started = Instant::now();
        let name = self.unique_name(&graph.name);
        let inputs = piece
            .inputs
            .iter()
            .map(|&t| binding(graph, t))
            .collect::<Result<Vec<_>>>()?;
        let outputs = piece
            .outputs
            .iter()
            .map(|&t| binding(graph, t))
            .collect::<Result<Vec<_>>>()?;
        if self.from_cache {
            let known = self.graphs.lock().ok().and_then(|g| g.get(&name).cloned());
            let (graph_inputs, graph_outputs) = known.ok_or_else(|| Error::Lowering {
                graph: graph.name.clone(),
                message: format!("the cached context has no graph {name}"),
            })?;
            let retrieved = Graph::retrieve(&self.context, &name, graph_inputs, graph_outputs)?;
            return QnnExecutable::new(graph.name.clone(), retrieved, inputs, outputs);
        }
        let mut builder = GraphBuilder::new(&self.context, &name)?;
        let mut lowering = Lowering::new(&mut builder, graph, self.format);
        for &t in &piece.inputs {
            lowering.ensure_input(t)?;
        }
        let source = FileWeights {
            source: weights,
            reports: &self.reports,
        };
        for op in &graph.nodes {
            lowering.op(op, &source)?;
        }
        for &t in &piece.outputs {
            lowering.output(t)?;
        }
        let built = started.elapsed();
        let compiled = builder.finalize()?;
        let finalized = started.elapsed() - built;
        if let Ok(mut t) = self.times.lock() {
            t.graphs += 1;
            t.build += built;
            t.finalize += finalized;
        }
        if let Ok(mut g) = self.graphs.lock() {
            g.insert(
                name,
                (compiled.inputs().to_vec(), compiled.outputs().to_vec()),
            );
        }
        QnnExecutable::new(graph.name.clone(), compiled, inputs, outputs)
    }
}

/// The arena or boundary place of a piece's input or output.
fn binding(graph: &Subgraph, t: TensorId) -> Result<Binding> {
    let decl = graph.tensor(t).ok_or_else(|| Error::Lowering {
        graph: graph.name.clone(),
        message: format!("no tensor {}", t.0),
    })?;
    let bytes = decl.n_bytes().ok_or_else(|| Error::Lowering {
        graph: graph.name.clone(),
        message: format!("{} has no whole size", decl.name),
    })?;
    let place = match decl.kind {
        TensorKind::Boundary { id } => Place::Boundary(id.0),
        TensorKind::Intermediate { offset } => Place::Arena(offset),
        _ => {
            return Err(Error::Lowering {
                graph: graph.name.clone(),
                message: format!("{} is neither a boundary nor an intermediate", decl.name),
            })
        }
    };
    Ok(Binding { place, bytes })
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

/// Weight bytes for lowering: the model's, or zeros for a validation probe.
trait WeightProvider {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)>;
    fn vector_f16(&self, name: &str) -> Result<Vec<u8>>;
}

struct FileWeights<'a> {
    source: &'a dyn WeightSource,
    reports: &'a Mutex<Vec<ConversionReport>>,
}

impl FileWeights<'_> {
    fn load(
        &self,
        name: &str,
    ) -> Result<(coordgen_graph::WeightDesc, coordgen_graph::WeightBytes)> {
        let missing = || Error::BadWeight {
            name: name.to_string(),
            message: "the model has no such weight".into(),
        };
        let desc = self.source.describe(name).ok_or_else(missing)?;
        let bytes = self.source.bytes(name).ok_or_else(missing)?;
        Ok((desc, bytes))
    }
}

impl WeightProvider for FileWeights<'_> {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)> {
        let (desc, bytes) = self.load(name)?;
        let converted = weights::convert_matrix(name, &desc, bytes.as_slice(), format)?;
        if let Ok(mut reports) = self.reports.lock() {
            if !reports.iter().any(|r| r.name == name) {
                reports.push(converted.report.clone());
            }
        }
        Ok((converted.data_type, converted.bytes))
    }

    fn vector_f16(&self, name: &str) -> Result<Vec<u8>> {
        let (desc, bytes) = self.load(name)?;
        Ok(weights::to_f16(&weights::dequantize(
            name,
            &desc,
            bytes.as_slice(),
        )?))
    }
}

/// Zero weights of the right shapes, for validation probes.
struct ZeroWeights<'a>(&'a Subgraph);

impl ZeroWeights<'_> {
    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.0
            .tensors
            .iter()
            .find(|t| matches!(&t.kind, TensorKind::Weight { name: n } if n == name))
            .map(|t| t.shape.clone())
            .ok_or_else(|| Error::BadWeight {
                name: name.to_string(),
                message: "not a weight of this graph".into(),
            })
    }
}

impl WeightProvider for ZeroWeights<'_> {
    fn matrix(&self, name: &str, format: WeightFormat) -> Result<(DataType, Vec<u8>)> {
        let shape = self.shape(name)?;
        let n: usize = shape.iter().product();
        let rows = shape.first().copied().unwrap_or(1);
        Ok(match format {
            WeightFormat::F16 => (DataType::F16, vec![0; n * 2]),
            WeightFormat::Int8 | WeightFormat::Int4 => (
                DataType::SFixed8PerAxis {
                    axis: 0,
                    bitwidth: if format == WeightFormat::Int4 { 4 } else { 8 },
                    scales: vec![1.0; rows],
                },
                vec![0; n],
            ),
        })
    }

    fn vector_f16(&self, name: &str) -> Result<Vec<u8>> {
        let n: usize = self.shape(name)?.iter().product();
        Ok(vec![0; n * 2])
    }
}

/// Lowers ops of one subgraph into one QNN graph, in fp16.
struct Lowering<'b, 'g> {
    builder: &'b mut GraphBuilder,
    graph: &'g Subgraph,
    format: WeightFormat,
    /// The fp16 tensor holding each IR tensor's value so far.
    values: HashMap<TensorId, TensorRef>,
}

impl<'b, 'g> Lowering<'b, 'g> {
    fn new(builder: &'b mut GraphBuilder, graph: &'g Subgraph, format: WeightFormat) -> Self {
        Lowering {
            builder,
            graph,
            format,
            values: HashMap::new(),
        }
    }

    fn decl(&self, t: TensorId) -> Result<&'g coordgen_graph::TensorDecl> {
        self.graph.tensor(t).ok_or_else(|| Error::Lowering {
            graph: self.graph.name.clone(),
            message: format!("no tensor {}", t.0),
        })
    }

    fn unsupported(&self, what: String) -> Error {
        Error::Lowering {
            graph: self.graph.name.clone(),
            message: what,
        }
    }

    /// An f32 graph input for `t`, cast to fp16.
    fn ensure_input(&mut self, t: TensorId) -> Result<TensorRef> {
        if let Some(&v) = self.values.get(&t) {
            return Ok(v);
        }
        let decl = self.decl(t)?;
        if decl.dtype != DType::F32 {
            return Err(self.unsupported(format!("input {} is {}, not f32", decl.name, decl.dtype)));
        }
        let input =
            self.builder
                .tensor(&decl.name, Role::Input, DataType::F32, &decl.shape, None)?;
        let half = self.native(t)?;
        self.builder.node("Cast", &[input], &[half], &[])?;
        self.values.insert(t, half);
        Ok(half)
    }

    /// A new fp16 tensor of `t`'s shape, inside the graph.
    fn native(&mut self, t: TensorId) -> Result<TensorRef> {
        let decl = self.decl(t)?;
        self.builder
            .tensor(&decl.name, Role::Native, DataType::F16, &decl.shape, None)
    }

    fn value(&mut self, t: TensorId) -> Result<TensorRef> {
        match self.values.get(&t) {
            Some(&v) => Ok(v),
            None => self.ensure_input(t),
        }
    }

    /// Casts `t`'s value to an f32 graph output.
    fn output(&mut self, t: TensorId) -> Result<()> {
        let decl = self.decl(t)?;
        if decl.dtype != DType::F32 {
            return Err(
                self.unsupported(format!("output {} is {}, not f32", decl.name, decl.dtype))
            );
        }
        let value =
            self.values.get(&t).copied().ok_or_else(|| {
                self.unsupported(format!("output {} is never computed", decl.name))
            })?;
        let out =
            self.builder
                .tensor(&decl.name, Role::Output, DataType::F32, &decl.shape, None)?;
        self.builder.node("Cast", &[value], &[out], &[])
    }

    fn weight_name(&self, t: TensorId) -> Result<&'g str> {
        match &self.decl(t)?.kind {
            TensorKind::Weight { name } => Ok(name),
            _ => Err(self.unsupported(format!("{} is not a weight", self.decl(t)?.name))),
        }
    }

    fn op(&mut self, op: &Op, weights: &dyn WeightProvider) -> Result<()> {
        match *op {
            Op::RmsNorm {
                x,
                weight,
                eps,
                out,
            } => {
                let x = self.value(x)?;
                let name = self.weight_name(weight)?;
                let decl = self.decl(weight)?;
                let gamma_bytes = weights.vector_f16(name)?;
                let gamma = self.builder.tensor(
                    name,
                    Role::Static,
                    DataType::F16,
                    &[decl.n_elements()],
                    Some(&gamma_bytes),
                )?;
                let rank = self.decl(out)?.shape.len();
                let axes = self
                    .builder
                    .u32_param_tensor("axes", &[rank.saturating_sub(1) as u32])?;
                let y = self.native(out)?;
                self.builder.node(
                    "RmsNorm",
                    &[x, gamma],
                    &[y],
                    &[
                        Param::Scalar("epsilon", Scalar::F32(eps)),
                        Param::Tensor("axes", axes),
                    ],
                )?;
                self.values.insert(out, y);
            }
            Op::MatMul { x, w, out } => {
                let x = self.value(x)?;
                let name = self.weight_name(w)?;
                let decl = self.decl(w)?;
                let (data_type, bytes) = weights.matrix(name, self.format)?;
                let w = self.builder.tensor(
                    name,
                    Role::Static,
                    data_type,
                    &decl.shape,
                    Some(&bytes),
                )?;
                let y = self.native(out)?;
                self.builder.node("FullyConnected", &[x, w], &[y], &[])?;
                self.values.insert(out, y);
            }
            Op::Add { a, b, out } => {
                let (a, b) = (self.value(a)?, self.value(b)?);
                let y = self.native(out)?;
                self.builder.node("ElementWiseAdd", &[a, b], &[y], &[])?;
                self.values.insert(out, y);
            }
            Op::SiluMul { gate, up, out } => {
                let (gate, up) = (self.value(gate)?, self.value(up)?);
                let sigmoid = self.native(out)?;
                let silu = self.native(out)?;
                let y = self.native(out)?;
                self.builder.node("Sigmoid", &[gate], &[sigmoid], &[])?;
                self.builder
                    .node("ElementWiseMultiply", &[gate, sigmoid], &[silu], &[])?;
                self.builder
                    .node("ElementWiseMultiply", &[silu, up], &[y], &[])?;
                self.values.insert(out, y);
            }
            _ => return Err(self.unsupported(format!("{} is not lowered to QNN", op.name()))),
        }
        Ok(())
    }
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
        let f32_io = op
            .inputs()
            .into_iter()
            .chain([op.output()])
            .filter(|&t| {
                !matches!(
                    graph.tensor(t).map(|d| &d.kind),
                    Some(TensorKind::Weight { .. })
                )
            })
            .all(|t| graph.tensor(t).is_some_and(|d| d.dtype == DType::F32));
        let kind_ok = match *op {
            Op::RmsNorm { .. } | Op::Add { .. } | Op::SiluMul { .. } => true,
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
            source: Box::new(e),
        }
    }
}

/// A finalized QNN graph bound to a session's buffers.
pub struct QnnExecutable {
    name: String,
    graph: Graph,
    inputs: Vec<Binding>,
    outputs: Vec<Binding>,
    /// Per output: a staging buffer when its place overlaps an input's
    /// (arena bytes reused after the input's last read), else `None`: the
    /// library writes outputs in place only where nothing it reads lives.
    staging: Vec<Option<Vec<u8>>>,
    input_ptrs: Vec<*const u8>,
    output_ptrs: Vec<*mut u8>,
}

// SAFETY: the pointer vectors only hold addresses during `run`.
unsafe impl Send for QnnExecutable {}

impl QnnExecutable {
    fn new(
        name: String,
        graph: Graph,
        inputs: Vec<Binding>,
        outputs: Vec<Binding>,
    ) -> Result<Self> {
        let staging = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let clash = inputs.iter().any(|b| b.overlaps(o))
                    || outputs[..i].iter().any(|b| b.overlaps(o));
                clash.then(|| vec![0u8; o.bytes])
            })
            .collect();
        Ok(QnnExecutable {
            name,
            graph,
            inputs,
            outputs,
            staging,
            input_ptrs: Vec::new(),
            output_ptrs: Vec::new(),
        })
    }

    /// Outputs written through a staging copy (zero in a layer block:
    /// the arena keeps a piece's inputs and outputs apart).
    pub fn staged_outputs(&self) -> usize {
        self.staging.iter().filter(|s| s.is_some()).count()
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn base(state: &mut SessionState, b: &Binding) -> Option<*mut u8> {
        let (buffer, start) = match b.place {
            Place::Boundary(id) => (state.boundaries.get_mut(id)?, 0),
            Place::Arena(offset) => (&mut state.arena, offset),
        };
        let end = start.checked_add(b.bytes)?;
        buffer
            .as_bytes_mut()
            .get_mut(start..end)
            .map(|s| s.as_mut_ptr())
    }
}

impl Executable for QnnExecutable {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(
        &mut self,
        state: &mut SessionState,
        _params: &ExecParams,
    ) -> std::result::Result<(), coordgen_graph::Error> {
        // Padding rows run too (the graph is static); they hold whatever
        // the buffers held, and every op is row-wise, so valid rows are
        // unaffected and the CPU ignores the rest.
        let too_small = |what: &str| Error::Lowering {
            graph: self.name.clone(),
            message: format!("the session's {what} buffer is smaller than the plan"),
        };
        self.input_ptrs.clear();
        self.output_ptrs.clear();
        for b in &self.inputs {
            let p = Self::base(state, b).ok_or_else(|| too_small("input"))?;
            self.input_ptrs.push(p.cast_const());
        }
        for (b, staging) in self.outputs.iter().zip(&mut self.staging) {
            let p = match staging {
                Some(s) => s.as_mut_ptr(),
                None => Self::base(state, b).ok_or_else(|| too_small("output"))?,
            };
            self.output_ptrs.push(p);
        }
        // SAFETY: every pointer addresses `bytes` bytes inside the session's
        // buffers (checked just above) or a staging buffer of that size;
        // `state` is borrowed mutably for the whole call; outputs overlap
        // no input or other output (overlapping ones are staged).
        let result = unsafe { self.graph.execute_raw(&self.input_ptrs, &self.output_ptrs) };
        self.input_ptrs.clear();
        self.output_ptrs.clear();
        result?;
        for (b, staging) in self.outputs.iter().zip(&self.staging) {
            if let Some(s) = staging {
                let p = Self::base(state, b).ok_or_else(|| too_small("output"))?;
                // SAFETY: `p` addresses `b.bytes` bytes of the session's
                // buffer, and `s` is a separate buffer of that size.
                unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), p, b.bytes) };
            }
        }
        Ok(())
    }
}
