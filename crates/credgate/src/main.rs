//! The `credgate` binary: parses arguments, loads config, sets up tracing, wires the
//! parts together and waits for shutdown. Logic lives in the library crates.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod exit;
mod secrets;
mod serve;

use clap::Parser;

/// mimalloc: a proxy allocates and frees many small buffers per request on every
/// worker thread; mimalloc's per-thread free lists beat glibc malloc there
/// (measured with bench/proxy-throughput.sh, see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return exit::Code::Failure.into();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => exit::Code::Ok.into(),
        Err(failure) => {
            eprintln!("{}", failure.message);
            failure.code.into()
        }
    }
}
