//! The command line (clap derive). Parsing only; `main` dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "workload-issuer",
    version,
    about = "OIDC issuer and JWKS discovery server for workload identity"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WORKLOAD_ISSUER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the issuer: discovery, JWKS and the TokenRequest API.
    Serve(ConfigArgs),
    /// Validate a configuration file and report every problem in it.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Inspect and rotate signing keys in the keys dir, with or without a server running.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List every cluster's keys: state, kid, algorithm, times, next transition.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Promote the next key to signing now.
    Rotate {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        cluster: String,
        /// Rotate even if the next key was published for less than publish_ahead.
        #[arg(long)]
        force: bool,
    },
    /// Remove a key from the JWKS at once (a compromised key) and delete it.
    Revoke {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        kid: String,
    },
}

/// Where the configuration comes from, and the values that override it.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file; without it, the embedded default.
    #[arg(long, env = "WORKLOAD_ISSUER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on, such as 127.0.0.1:8080.
    #[arg(long, env = "WORKLOAD_ISSUER_LISTEN")]
    pub listen: Option<String>,
    /// The URL relying parties reach this server at; issuers default to <URL>/c/<id>.
    #[arg(long, env = "WORKLOAD_ISSUER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Directory holding signing keys, manifests and generated API tokens.
    #[arg(long, env = "WORKLOAD_ISSUER_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key, serve https.
    #[arg(long, env = "WORKLOAD_ISSUER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "WORKLOAD_ISSUER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            public_url: self.public_url.clone(),
            keys_dir: self.keys_dir.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}
