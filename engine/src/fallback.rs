//! Falling back to the CPU when a GPU device is lost.
//!
//! A Vulkan executable copies its outputs back into the session only after
//! its submission completed, and no subgraph writes a buffer it reads, so a
//! run that fails with a lost device left the session as it was before the
//! run (what a chain's earlier CPU pieces wrote, they write again). The
//! subgraph then runs again on the CPU, compiled on first need; the loss is
//! shared by every executable of the engine, so later runs go straight to
//! the CPU.

use coordgen_cpu::CpuBackend;
use coordgen_graph::{
    Backend, Error, ExecParams, Executable, SessionState, Subgraph, WeightSource,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Whether `e` says the Vulkan device was lost.
pub(crate) fn is_device_lost(e: &Error) -> bool {
    match e {
        Error::Backend { backend, cause } if *backend == "vulkan" => matches!(
            cause.downcast_ref::<coordgen_vulkan::Error>(),
            Some(coordgen_vulkan::Error::DeviceLost)
        ),
        _ => false,
    }
}

/// An executable on the GPU with the CPU as its fallback.
pub(crate) struct DeviceFallback {
    primary: Box<dyn Executable>,
    graph: Subgraph,
    cpu: CpuBackend,
    weights: Arc<dyn WeightSource>,
    fallback: Option<Box<dyn Executable>>,
    /// Shared by every executable of the engine.
    lost: Arc<AtomicBool>,
}

impl DeviceFallback {
    pub(crate) fn new(
        primary: Box<dyn Executable>,
        graph: &Subgraph,
        cpu: CpuBackend,
        weights: Arc<dyn WeightSource>,
        lost: Arc<AtomicBool>,
    ) -> Self {
        DeviceFallback {
            primary,
            graph: graph.clone(),
            cpu,
            weights,
            fallback: None,
            lost,
        }
    }

    fn run_on_cpu(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        if self.fallback.is_none() {
            self.fallback = Some(self.cpu.compile(&self.graph, self.weights.as_ref())?);
        }
        match self.fallback.as_mut() {
            Some(exe) => exe.run(state, params),
            None => Err(Error::InvalidGraph(format!(
                "{}: no CPU fallback",
                self.graph.name
            ))),
        }
    }
}

impl Executable for DeviceFallback {
    fn name(&self) -> &str {
        self.primary.name()
    }

    fn run(&mut self, state: &mut SessionState, params: &ExecParams) -> Result<(), Error> {
        if self.lost.load(Ordering::Relaxed) {
            return self.run_on_cpu(state, params);
        }
        match self.primary.run(state, params) {
            Err(e) if is_device_lost(&e) => {
                if !self.lost.swap(true, Ordering::Relaxed) {
                    eprintln!("warning: {e}; running on the CPU from now on");
                }
                self.run_on_cpu(state, params)
            }
            other => other,
        }
    }
}
