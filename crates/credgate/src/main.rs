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

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
