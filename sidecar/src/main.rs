//! `lameduck-sidecar`: the injected preStop sidecar.
//!
//! One static binary with three subcommands: `serve` (the sidecar itself), `prestop` (the
//! exec hook app containers run) and `probe` (the startup probe). See docs/protocol.md.

#![forbid(unsafe_code)]

mod cli;
mod clients;
mod deregister;
mod drain_action;
mod http_drain;
mod install;
mod kernel;
mod lines;
mod persist;
mod serve;
mod settings;
mod state;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logging(&cli.log);
    // One thread: the sidecar waits on sockets and timers, it never computes much, and a
    // single-threaded runtime keeps its memory small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lameduck: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(cli.command.run())
}
