//! `coordgen`: run, chat with, benchmark, inspect and compile GGUF models.

mod bench;
mod bench_timeline;
mod bench_workload;
mod common;
mod cost_cache;
mod inspect;
mod run;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  coordgen run --context tools/demo-context.md --prompt \"Summarize the document.\"
  echo \"What is a KV cache?\" | coordgen run --max-tokens 64
  coordgen run --prompt \"Write a haiku\" --temperature 0.8 --top-p 0.9 --seed 7
  coordgen run --prompt \"List three colors\" --json
  coordgen chat --context notes.txt
  coordgen bench --context tools/demo-context.md --prompt \"Summarize.\" --runs 3
  coordgen bench --prefill 512 --decode 128 --threads 2 --json
  coordgen bench --verify-widths 1,2,4,8,16,32 --depth 1024 --plot verify.svg
  coordgen bench --workload tools/workloads/example.jsonl --spec none,pld,sam
  coordgen inspect --tensors
  coordgen compile --verify-widths 1,8,16

The default model is models/SmolLM2-135M-Instruct.Q4_1.gguf (fetch it with
tools/fetch-model), or the file named by COORDGEN_MODEL.";

#[derive(Parser)]
#[command(
    name = "coordgen",
    version,
    about = "On-device LLM inference for context-heavy generation",
    long_about = "coordgen runs llama-family GGUF models on the CPU through a graph compiler \
that lowers the model into static-shape bucketed subgraphs. It is built for answers over \
local data: documents to summarize, passages to answer from.",
    after_help = EXAMPLES,
    // A later flag overrides an earlier one, so wrappers such as tools/demo
    // can set defaults that the user's own arguments replace.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a prompt (or stdin) over optional context files, streaming the answer.
    Run(run::RunArgs),
    /// Interactive multi-turn chat; each turn reuses the KV cache of the last.
    Chat(run::ChatArgs),
    /// Measure speed: prefill/decode over a context, llama-bench style pp/tg and verify-width costs, or speculative decoding over a workload.
    #[command(after_help = bench::HELP)]
    Bench(bench::BenchArgs),
    /// Show a GGUF file's metadata and tensors.
    Inspect(inspect::InspectArgs),
    /// Print the compiled plan: buckets, subgraphs, boundary tensors, arena bytes.
    Compile(inspect::CompileArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Chat(args) => run::chat(args),
        Command::Bench(args) => bench::bench(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Compile(args) => inspect::compile(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
