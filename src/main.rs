//! The `workload-issuer` binary: parse the command line, start logging, dispatch.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;
use workload_issuer::cli::{Cli, Command, FederationCommand, LogFormat};
use workload_issuer::client;
use workload_issuer::config::Config;

fn main() -> ExitCode {
    quiet_on_a_closed_pipe();
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
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                commit = workload_issuer::COMMIT,
                "workload-issuer starting"
            );
            let config = match Config::load(args.config.as_deref(), &args.overrides()) {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "{e}");
                    return ExitCode::from(2);
                }
            };
            block_on(async {
                match workload_issuer::serve::serve(config).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        let _ = writeln!(std::io::stderr(), "error: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::CheckConfig { file } => workload_issuer::commands::check_config(&file),
        Command::Keys { command } => workload_issuer::commands::keys(command),
        Command::Clusters { command } => workload_issuer::commands::clusters::run(command),
        Command::Store { command } => workload_issuer::commands::store::run(command),
        Command::Export {
            config,
            cluster,
            out,
        } => workload_issuer::commands::export(&config, &cluster, &out),
        Command::Token(args) => block_on(client::token::run(args.into())),
        Command::Agent(args) => block_on(client::agent::run(args.into())),
        Command::Verify(args) => block_on(client::verify::run(args.into())),
        Command::KubernetesSigner(args) => block_on(client::relay::run(args.into())),
        Command::Federation { command } => match command {
            FederationCommand::Check(args) => block_on(client::federation::run_check(args.into())),
            FederationCommand::Print(args) => client::federation::print(args.into()),
        },
    }
}

/// `workload-issuer keys list | head -3`: once the reader has gone, the next
/// print fails. Rust ignores SIGPIPE, so `println!` panics there; end
/// quietly instead, with the status a shell gives a process SIGPIPE ended
/// (128 + 13). Every other panic is reported as before.
fn quiet_on_a_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            // A working copy of the etcd store holds keys in the clear.
            workload_issuer::commands::store::discard();
            std::process::exit(141);
        }
        report(info);
    }));
}

fn block_on(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
