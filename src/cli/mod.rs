//! The command line (clap derive). Parsing only; `main` dispatches.
//!
//! With `main`, the only module that knows clap: the client's commands take
//! their own plain options (`client::token::TokenOptions`, ...), which the
//! `From` impls here build from the parsed flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::agent::AgentOptions;
use crate::client::relay::RelayOptions;
use crate::client::token::TokenOptions;
use crate::client::verify::VerifyOptions;
use crate::client::{
    AuthOptions, CertFiles, Format, IdentityOptions, SecretOptions, SecretType, TargetOptions,
};
use crate::config::Overrides;

mod clusters;
mod federation;
mod store;

pub use clusters::{AddClusterArgs, ClustersCommand};
pub use federation::{
    FederationCheckArgs, FederationCommand, FederationPrintArgs, FederationProvider, PrintProvider,
};
pub use store::{MigrateArgs, StoreCommand};

#[derive(Debug, Parser)]
#[command(
    name = "workload-issuer",
    version = crate::VERSION,
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
    /// Create, list, show, remove and recreate clusters at run time, in the keys dir,
    /// with or without a server running (the admin API does the same over HTTP).
    Clusters {
        #[command(subcommand)]
        command: ClustersCommand,
    },
    /// The etcd store: make a key-encryption key, move clusters in or out, re-seal the keys.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Mint a token through the TokenRequest API and write it out (once, or kept fresh),
    /// authenticated by an API token (--token-file) or a client certificate (--cert, --key).
    Token(TokenArgs),
    /// Serve tokens to local workloads on a Unix socket (the metadata-server pattern).
    Agent(AgentArgs),
    /// Verify a token as a relying party does, and say what is wrong with it.
    Verify(VerifyArgs),
    /// Serve kube-apiserver's external token signer (--service-account-signing-endpoint)
    /// on a Unix socket, relaying to the issuer's API: for a kube-apiserver on another machine.
    KubernetesSigner(KubernetesSignerArgs),
    /// Write a cluster's discovery document and JWKS as static files, for object storage or a CDN.
    Export {
        #[command(flatten)]
        config: ConfigArgs,
        /// The cluster to export.
        #[arg(long)]
        cluster: String,
        /// Directory to write <issuer path>/.well-known/openid-configuration and
        /// <issuer path>/openid/v1/jwks under.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an issuer and a token against AWS, GCP, Azure and Vault's rules, or print
    /// what registers a cluster with them.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
}

/// How to authenticate to the issuer's API: an API token, a client
/// certificate, or both (the issuer then goes by the token).
#[derive(Debug, Args)]
pub struct ApiAuthArgs {
    /// File holding the API client's bearer token; re-read on every call.
    #[arg(long, required_unless_present = "cert")]
    pub token_file: Option<PathBuf>,
    /// PEM client certificate (chain) to present to the issuer instead of a token, for
    /// an API client with certificate_names; with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl From<ApiAuthArgs> for AuthOptions {
    fn from(a: ApiAuthArgs) -> AuthOptions {
        AuthOptions {
            token_file: a.token_file,
            cert: a.cert.zip(a.key).map(|(cert, key)| CertFiles { cert, key }),
        }
    }
}

/// Who to mint for, and where to ask.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The issuer URL (a kubeconfig's server), such as https://oidc.example.com/c/demo.
    #[arg(long)]
    pub server: String,
    #[command(flatten)]
    pub auth: ApiAuthArgs,
    /// PEM CA bundle to trust for the server; without it, the system's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Namespace of the service account.
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Name of the service account.
    #[arg(long)]
    pub service_account: String,
    /// Requested lifetime, such as 1h or 3600s; the server's default when absent.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Bind the token to a pod, given as NAME:UID.
    #[arg(long, value_parser = parse_bound_pod)]
    pub bound_pod: Option<(String, String)>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Audience of the token (repeatable); the cluster's default when absent.
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Write here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File mode of --out, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub mode: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Raw)]
    pub format: OutputFormat,
    /// Keep running and rewrite --out at 80 % of each token's lifetime.
    #[arg(long, requires = "out")]
    pub refresh: bool,
    /// The API server of the target cluster the kubeconfig, secret or env
    /// output is for (https; http only on loopback); without it, --server.
    #[arg(long, value_name = "URL")]
    pub target_server: Option<String>,
    /// PEM CA bundle of --target-server, written into the output.
    #[arg(long, value_name = "FILE")]
    pub target_ca: Option<PathBuf>,
    /// With --format secret: what the Secret holds, as the DOCA credential
    /// request's type.
    #[arg(long, value_enum)]
    pub secret_type: Option<SecretTypeArg>,
    /// With --format secret: the Secret's name.
    #[arg(long, value_name = "NAME")]
    pub secret_name: Option<String>,
    /// With --format secret: the Secret's namespace; kubectl's current one when absent.
    #[arg(long, value_name = "NAMESPACE")]
    pub secret_namespace: Option<String>,
    /// With --format secret: a label of the Secret, KEY=VALUE (repeatable).
    // Taken as given even when it begins with '-', so the label rule it
    // breaks is what the user hears, not "unexpected argument".
    #[arg(long = "label", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub labels: Vec<String>,
}

/// What a `--format secret` Secret holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SecretTypeArg {
    /// The key `kubeconfig`: a kubeconfig for the target.
    Kubeconfig,
    /// The keys TOKEN_FILE, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, KUBERNETES_CA_DATA.
    #[value(name = "tokenFile")]
    TokenFile,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Unix socket to listen on.
    #[arg(long)]
    pub socket: PathBuf,
    /// File mode of the socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
}

#[derive(Debug, Args)]
pub struct KubernetesSignerArgs {
    /// The cluster's issuer URL on the issuer's API listener, such as
    /// https://oidc.example.com/c/demo.
    #[arg(long)]
    pub server: String,
    #[command(flatten)]
    pub auth: ApiAuthArgs,
    /// PEM CA bundle to trust for the server; without it, the system's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Unix socket kube-apiserver dials (its --service-account-signing-endpoint).
    #[arg(long)]
    pub socket: PathBuf,
    /// A group (name or id) that may connect too: the socket is then 0660, not 0600.
    #[arg(long)]
    pub socket_group: Option<String>,
}

impl From<KubernetesSignerArgs> for RelayOptions {
    fn from(a: KubernetesSignerArgs) -> RelayOptions {
        RelayOptions {
            server: a.server,
            auth: a.auth.into(),
            ca_file: a.ca_file,
            socket: a.socket,
            socket_group: a.socket_group,
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The issuer the token must come from, exactly as in its iss claim.
    #[arg(long)]
    pub issuer: String,
    /// The audience the token must be for.
    #[arg(long)]
    pub audience: String,
    /// PEM CA bundle to trust for the issuer; without it, the system's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// The token, a file holding it, or - for standard input.
    pub token: String,
}

/// How `token` writes what it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The token alone, with a trailing newline.
    Raw,
    /// `{"token": ..., "expirationTimestamp": ...}`.
    Json,
    /// A kubeconfig: the server, its CA and the token.
    Kubeconfig,
    /// The DOCA `tokenFile` keys as KEY=value lines, for a shell or --from-env-file.
    Env,
    /// A Kubernetes Secret (see --secret-type), for kubectl apply -f.
    Secret,
}

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Format {
        match f {
            OutputFormat::Raw => Format::Raw,
            OutputFormat::Json => Format::Json,
            OutputFormat::Kubeconfig => Format::Kubeconfig,
            OutputFormat::Env => Format::Env,
            OutputFormat::Secret => Format::Secret,
        }
    }
}

impl From<IdentityArgs> for IdentityOptions {
    fn from(a: IdentityArgs) -> IdentityOptions {
        IdentityOptions {
            server: a.server,
            auth: a.auth.into(),
            ca_file: a.ca_file,
            namespace: a.namespace,
            service_account: a.service_account,
            duration: a.duration,
            bound_pod: a.bound_pod,
        }
    }
}

impl From<TokenArgs> for TokenOptions {
    fn from(a: TokenArgs) -> TokenOptions {
        TokenOptions {
            identity: a.identity.into(),
            audiences: a.audiences,
            out: a.out,
            mode: a.mode,
            format: a.format.into(),
            refresh: a.refresh,
            target: TargetOptions {
                server: a.target_server,
                ca_file: a.target_ca,
            },
            secret: SecretOptions {
                kind: a.secret_type.map(|t| match t {
                    SecretTypeArg::Kubeconfig => SecretType::Kubeconfig,
                    SecretTypeArg::TokenFile => SecretType::TokenFile,
                }),
                name: a.secret_name,
                namespace: a.secret_namespace,
                labels: a.labels,
            },
        }
    }
}

impl From<AgentArgs> for AgentOptions {
    fn from(a: AgentArgs) -> AgentOptions {
        AgentOptions {
            identity: a.identity.into(),
            socket: a.socket,
            socket_mode: a.socket_mode,
        }
    }
}

impl From<VerifyArgs> for VerifyOptions {
    fn from(a: VerifyArgs) -> VerifyOptions {
        VerifyOptions {
            issuer: a.issuer,
            audience: a.audience,
            ca_file: a.ca_file,
            json: a.json,
            token: a.token,
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write it like 1h, 30m or 3600s"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 640"))
}

fn parse_bound_pod(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((name, uid)) if !name.is_empty() && !uid.is_empty() => {
            Ok((name.to_owned(), uid.to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME:UID")),
    }
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
        /// The key's kid, as `keys list` prints it. A kid is base64url and may
        /// begin with '-', so the value is taken as given.
        #[arg(long, allow_hyphen_values = true)]
        kid: String,
    },
    /// Publish a public key of a publish_only cluster, one that signs its own
    /// tokens (its kube-apiserver's sa.pub): PEM "PUBLIC KEY" or "RSA PUBLIC KEY".
    Import {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        cluster: String,
        /// The PEM file of the public key (RSA 2048/3072/4096 or EC P-256).
        #[arg(long)]
        public_key: PathBuf,
        /// `current`: the cluster signs with it now; `next`: it will, once it has
        /// been published for publish_ahead. Default: current for the cluster's
        /// first key, next after.
        #[arg(long, value_enum)]
        state: Option<ImportState>,
        /// Import as current beside a current key, though relying parties may
        /// not have the new key in their cached JWKS yet.
        #[arg(long)]
        force: bool,
    },
    /// Stop publishing a key as current (the next key takes over) or as next;
    /// it stays in the JWKS, retired, for the retention.
    Retire {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        cluster: String,
        /// The key's kid, as `keys list` prints it.
        #[arg(long, allow_hyphen_values = true)]
        kid: String,
        /// Let the next key take over though it was published for less than
        /// publish_ahead.
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a cluster's lost manifest.json from the key files in its
    /// directory, keeping their kids: one key signs, the others stay
    /// published as retired for a whole retention.
    Recover {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        cluster: String,
        /// The kid of the key that signs from now on; without it, the newest
        /// key file of the configured algorithm.
        #[arg(long, allow_hyphen_values = true)]
        current: Option<String>,
    },
}

/// The state a public key is imported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ImportState {
    Next,
    Current,
}

/// Where the configuration comes from, and the values that override it.
///
/// The layers: built-in defaults, the file, `WORKLOAD_ISSUER_*` variables
/// (every setting has one: `WORKLOAD_ISSUER_LISTEN`,
/// `WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS`), then these flags. The
/// variables are read by `config`, not here, so a flag always wins over one.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file, holding what it changes from the built-in
    /// defaults; without it, the embedded default.
    #[arg(long, env = "WORKLOAD_ISSUER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on, such as 127.0.0.1:8080 (or WORKLOAD_ISSUER_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
    /// The URL relying parties reach this server at; issuers default to <URL>/c/<id>
    /// (or WORKLOAD_ISSUER_PUBLIC_URL).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Directory holding signing keys, manifests and generated API tokens
    /// (or WORKLOAD_ISSUER_KEYS_DIR).
    #[arg(long)]
    pub keys_dir: Option<PathBuf>,
    /// PEM certificate chain; with --tls-key, serve https (or WORKLOAD_ISSUER_TLS_CERT).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (or WORKLOAD_ISSUER_TLS_KEY).
    #[arg(long)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_that_begins_with_a_hyphen_is_a_value_not_a_flag() {
        // base64url of a SHA-256 begins with '-' one time in 64.
        let kid = "-cQ9yGfq0p3Zk2Wb4Hq1sVYx7nE5aL8mT6uR0oJ2dI";
        let cli = Cli::try_parse_from([
            "workload-issuer",
            "keys",
            "revoke",
            "--cluster",
            "r",
            "--kid",
            kid,
        ])
        .unwrap();
        match cli.command {
            Command::Keys {
                command: KeysCommand::Revoke { kid: got, .. },
            } => assert_eq!(got, kid),
            other => panic!("parsed as {other:?}"),
        }
    }
}
