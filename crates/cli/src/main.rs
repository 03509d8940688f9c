//! The `shoal` binary: `shoal start` runs a node; `shoal sql` talks to one; `shoal bench`
//! loads and queries one and prints numbers; `shoal demo` runs a local cluster; `shoal node`
//! lists, drains and undrains nodes.

mod bench;
mod bench_cluster;
mod cert;
mod client;
mod demo;
mod memory;
mod node;
mod start;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the write path allocates and frees column buffers of
/// a few hundred KiB per request, which glibc hands back to the kernel and faults in again
/// (page faults and `malloc_consolidate` were a tenth of the ingest profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "Shoal: a distributed SQL database for time series"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (with no flags: a single-node database in ./shoal-data, HTTP on 127.0.0.1:7480).
    Start(Box<start::StartArgs>),
    /// Run SQL against a node: one statement as an argument, or an interactive shell.
    Sql(client::SqlArgs),
    /// Start an N-node cluster on loopback with sample data, to try clustering.
    Demo(demo::DemoArgs),
    /// Benchmark a running node: `bench ingest` (line protocol) or `bench query` (Q1–Q5).
    Bench(bench::BenchArgs),
    /// Node admin: `ls`, `status`, `drain`, `undrain` (through any node's admin API).
    Node(node::NodeArgs),
    /// Certificates: `create-ca`, `create-node <hosts…>`, `create-client <user>`, `ls`.
    Cert(cert::CertArgs),
}

fn main() -> std::process::ExitCode {
    // Before anything large is allocated; `shoal start` applies its own setting later.
    memory::set_huge_pages(false);
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Start(args) => runtime.block_on(start::run(*args)),
        Command::Sql(args) => runtime.block_on(client::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Demo(args) => runtime.block_on(demo::run(args)),
        Command::Node(args) => runtime.block_on(node::run(args)),
        Command::Cert(args) => cert::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
