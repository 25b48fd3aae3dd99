//! `lameduck-operator`: see `lameduck_operator::cli`.

use clap::Parser;
use lameduck_operator::cli::{self, Cli, Command};

fn main() -> anyhow::Result<()> {
    let Cli {
        log_format,
        command,
    } = Cli::parse();
    match command {
        Command::Crd => {
            cli::crd();
            Ok(())
        }
        Command::Inject(args) => cli::inject(&args),
        Command::Cleanup(args) => {
            cli::init_tracing(log_format);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cli::cleanup(&args))
        }
        Command::Run(args) => {
            cli::init_tracing(log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(lameduck_operator::runtime::run(*args))
        }
    }
}
