//! Graph groups: the graphs of one subgraph of a plan (a bucket's block of
//! layers) in a context of their own, so that a block's graphs for one
//! bucket width load and unload as a unit (progressive graph scheduling
//! swaps a block's prefill graph for its verify graph this way).

use crate::graph::{Graph, IoTensor};
use crate::runtime::{Context, Runtime};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A graph's inputs and outputs, as executing it needs them.
pub(crate) type GraphIo = (Vec<IoTensor>, Vec<IoTensor>);

/// A resident context and its graphs.
struct Loaded {
    context: Arc<Context>,
    graphs: HashMap<String, Graph>,
}

/// The graphs of one subgraph, in one context; see the module docs.
pub struct GraphGroup {
    name: String,
    runtime: Arc<Runtime>,
    /// Where the context binary is saved; a group can only be unloaded
    /// once it is (it could not come back otherwise).
    binary: Mutex<Option<PathBuf>>,
    /// Inputs and outputs of each graph, and the graphs' creation order.
    io: Mutex<(HashMap<String, GraphIo>, Vec<String>)>,
    state: Mutex<Option<Loaded>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GraphGroup {
    /// A new, resident group whose graphs are about to be built.
    pub(crate) fn build(name: &str, runtime: &Arc<Runtime>) -> Result<Arc<GraphGroup>> {
        let context = Context::new(runtime)?;
        Ok(Arc::new(GraphGroup {
            name: name.to_string(),
            runtime: runtime.clone(),
            binary: Mutex::new(None),
            io: Mutex::new((HashMap::new(), Vec::new())),
            state: Mutex::new(Some(Loaded {
                context,
                graphs: HashMap::new(),
            })),
        }))
    }

    /// A group saved at `binary`, not loaded yet.
    pub(crate) fn cached(
        name: &str,
        runtime: &Arc<Runtime>,
        binary: PathBuf,
        graphs: Vec<(String, GraphIo)>,
    ) -> Arc<GraphGroup> {
        let order = graphs.iter().map(|(n, _)| n.clone()).collect();
        Arc::new(GraphGroup {
            name: name.to_string(),
            runtime: runtime.clone(),
            binary: Mutex::new(Some(binary)),
            io: Mutex::new((graphs.into_iter().collect(), order)),
            state: Mutex::new(None),
        })
    }

    /// The subgraph this group holds, e.g. `prefill32/block0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_loaded(&self) -> bool {
        lock(&self.state).is_some()
    }

    /// Whether the group can be unloaded (its binary is saved).
    pub fn is_saved(&self) -> bool {
        lock(&self.binary).is_some()
    }

    /// Bytes of the saved context binary (what the group holds when
    /// resident, about), or 0 before it is saved.
    pub fn binary_bytes(&self) -> u64 {
        lock(&self.binary)
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// The graphs' names, in creation order.
    pub fn graph_names(&self) -> Vec<String> {
        lock(&self.io).1.clone()
    }

    pub(crate) fn io(&self, graph: &str) -> Option<GraphIo> {
        lock(&self.io).0.get(graph).cloned()
    }

    /// The resident context to build graphs in.
    pub(crate) fn context(&self) -> Result<Arc<Context>> {
        lock(&self.state)
            .as_ref()
            .map(|l| l.context.clone())
            .ok_or_else(|| self.error("is not loaded".into()))
    }

    /// Adds a graph built (and finalized) in this group's context.
    pub(crate) fn add(&self, graph: Graph) {
        let name = graph.name().to_string();
        {
            let mut io = lock(&self.io);
            io.0.insert(
                name.clone(),
                (graph.inputs().to_vec(), graph.outputs().to_vec()),
            );
            io.1.push(name.clone());
        }
        if let Some(loaded) = lock(&self.state).as_mut() {
            loaded.graphs.insert(name, graph);
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Group {
            group: self.name.clone(),
            message,
        }
    }

    /// Makes the group resident: reads its binary, creates the context and
    /// finds every graph. Safe to call from any thread; returns the time it
    /// took (zero when already loaded).
    pub fn load(&self) -> Result<Duration> {
        if self.is_loaded() {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let path = lock(&self.binary)
            .clone()
            .ok_or_else(|| self.error("has no saved binary to load".into()))?;
        let binary = std::fs::read(&path).map_err(|e| Error::Cache {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let context = Context::from_binary(&self.runtime, &binary)?;
        drop(binary);
        let mut graphs = HashMap::new();
        let (io, order) = lock(&self.io).clone();
        for name in order {
            let (inputs, outputs) = io
                .get(&name)
                .cloned()
                .ok_or_else(|| self.error(format!("lost the tensors of graph {name}")))?;
            let graph = Graph::retrieve(&context, &name, inputs, outputs)?;
            graphs.insert(name, graph);
        }
        let mut state = lock(&self.state);
        if state.is_none() {
            *state = Some(Loaded { context, graphs });
        }
        Ok(started.elapsed())
    }

    /// Frees the group's context and graphs (they load again from the
    /// saved binary when needed).
    pub fn unload(&self) -> Result<()> {
        if !self.is_saved() {
            return Err(self.error("cannot be unloaded before its binary is saved".into()));
        }
        let loaded = lock(&self.state).take();
        // Graphs before their context (they hold it too).
        drop(loaded);
        Ok(())
    }

    /// Serializes the resident context to `path` (written whole, then
    /// renamed into place); returns its size in bytes.
    pub(crate) fn save(&self, path: &Path) -> Result<u64> {
        let binary = self.context()?.binary()?;
        let io_error = |p: &Path, e: std::io::Error| Error::Cache {
            path: p.to_path_buf(),
            message: e.to_string(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &binary).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
        *lock(&self.binary) = Some(path.to_path_buf());
        Ok(binary.len() as u64)
    }

    /// Runs `f` on graph `name`, loading the group first if needed.
    pub(crate) fn with_graph<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Graph) -> Result<R>,
    ) -> Result<R> {
        if !self.is_loaded() {
            self.load()?;
        }
        let mut state = lock(&self.state);
        let graph = state
            .as_mut()
            .and_then(|l| l.graphs.get_mut(name))
            .ok_or_else(|| self.error(format!("has no graph {name}")))?;
        f(graph)
    }
}
