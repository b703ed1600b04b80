//! Human-readable description of a plan (`coordgen compile`).

use crate::ir::{Subgraph, TensorKind};
use crate::lower::Plan;
use std::fmt::Write;

fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn boundary_list(plan: &Plan, graph: &Subgraph, inputs: bool) -> String {
    let ids = if inputs {
        graph.boundary_inputs()
    } else {
        graph.boundary_outputs()
    };
    let names: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let shape = graph.tensors.iter().find_map(|t| match t.kind {
                TensorKind::Boundary { id: tid } if tid == *id => Some(&t.shape),
                _ => None,
            })?;
            let decl = plan.boundary_decls.get(id.0)?;
            Some(format!("{}{:?}", decl.name, shape))
        })
        .collect();
    names.join(" ")
}

impl Plan {
    /// A table of the plan: buckets, subgraphs, the tensors that cross
    /// subgraph boundaries and the arena bytes of each subgraph.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model: {} layers, d_model {}, d_ff {}, {} heads / {} KV heads x {}, vocab {}",
            c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim, c.vocab_size
        );
        let _ = writeln!(
            s,
            "buckets: prefill {:?}, decode/verify {:?}; {} layers per block; context {} tokens",
            o.prefill_widths, o.verify_widths, o.layers_per_block, o.context_length
        );
        let _ = writeln!(s, "output head: {}", self.head_weight);
        let _ = writeln!(
            s,
            "\nboundary buffers (allocated once per session, at the widest bucket):"
        );
        for b in &self.boundary_decls {
            let bytes = b.dtype.bytes_for(b.elements).unwrap_or(0);
            let _ = writeln!(
                s,
                "  {:<10} {:>4} x {:>9} = {:>10}",
                b.name,
                b.dtype,
                b.elements,
                mib(bytes)
            );
        }
        let _ = writeln!(
            s,
            "  {:<10} f16  {} layers x K,V x {} x {} = {}",
            "kv_cache",
            c.n_layers,
            o.context_length,
            c.n_kv_heads * c.head_dim,
            mib(self.kv_cache_bytes())
        );
        let mut total_arena = 0usize;
        for bucket in &self.buckets {
            let _ = writeln!(s, "\nbucket {:?} width {}:", bucket.kind, bucket.width);
            let _ = writeln!(
                s,
                "  {:<24} {:>5} {:>8} {:>11}  {:<40} writes",
                "subgraph", "ops", "weights", "arena", "reads"
            );
            for g in bucket.subgraphs() {
                total_arena = total_arena.max(g.arena_bytes);
                let _ = writeln!(
                    s,
                    "  {:<24} {:>5} {:>8} {:>11}  {:<40} {}",
                    g.name,
                    g.nodes.len(),
                    g.weight_names().count(),
                    mib(g.arena_bytes),
                    boundary_list(self, g, true),
                    boundary_list(self, g, false)
                );
            }
        }
        let _ = writeln!(
            s,
            "\nlargest arena: {}; boundary buffers: {}; KV cache: {}",
            mib(total_arena),
            mib(self.boundary_bytes()),
            mib(self.kv_cache_bytes())
        );
        s
    }
}
