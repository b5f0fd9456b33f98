//! The `workload-issuer` binary: parse the command line, start logging, dispatch.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use workload_issuer::cli::{Cli, Command, LogFormat};
use workload_issuer::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_env("WORKLOAD_ISSUER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (a log shipper restarting) must not take the
        // server down: tracing's own report of a failed write would panic.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    match cli.command {
        Command::Serve(args) => {
            let config = match Config::load(args.config.as_deref(), &args.overrides()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(workload_issuer::serve::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => workload_issuer::commands::check_config(&file),
        Command::Keys { command } => workload_issuer::commands::keys(command),
    }
}
