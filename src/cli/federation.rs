//! The flags of `workload-issuer federation check` and `federation print`,
//! turned into the client side's plain options (`client::federation`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::client::federation::{CheckOptions, PrintOptions, Provider, RoleFiles};

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Fetch discovery and the JWKS as each provider does and print one line per rule:
    /// pass, warn, FAIL or skip, the value seen and what to change. Exit 0 only when no
    /// rule fails.
    Check(FederationCheckArgs),
    /// Print the trust policy (aws) or the gcloud, az or vault commands that make a
    /// provider trust one service account of a cluster.
    Print(FederationPrintArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FederationProvider {
    Aws,
    Gcp,
    Azure,
    Vault,
    All,
}

impl FederationProvider {
    fn providers(self) -> Vec<Provider> {
        match self {
            FederationProvider::Aws => vec![Provider::Aws],
            FederationProvider::Gcp => vec![Provider::Gcp],
            FederationProvider::Azure => vec![Provider::Azure],
            FederationProvider::Vault => vec![Provider::Vault],
            FederationProvider::All => Provider::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Args)]
pub struct FederationCheckArgs {
    /// The issuer URL as registered with the provider; with --discovery, the bundle's own
    /// issuer when absent.
    #[arg(long, required_unless_present = "discovery")]
    pub issuer: Option<String>,
    #[arg(long, value_enum, default_value_t = FederationProvider::All)]
    pub provider: FederationProvider,
    /// The token to check: a file holding it, the token itself, or - for standard input.
    #[arg(long)]
    pub token: Option<String>,
    /// The audience the provider accepts (AWS client id, GCP allowed audience, Azure
    /// credential audience, Vault bound audience); each provider's default otherwise.
    #[arg(long)]
    pub audience: Option<String>,
    /// PEM CA bundle to trust for the issuer; without it, the system's roots (as the clouds).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// An exported discovery document to check instead of fetching (with --jwks).
    #[arg(long, requires = "jwks")]
    pub discovery: Option<PathBuf>,
    /// An exported JWKS to check instead of fetching (with --discovery).
    #[arg(long, requires = "discovery")]
    pub jwks: Option<PathBuf>,
    /// Connect to HOST at ADDR:PORT instead of where DNS points (repeatable), as
    /// HOST=ADDR:PORT: check an issuer before its DNS record is live.
    #[arg(long, value_parser = parse_resolve)]
    pub resolve: Vec<(String, std::net::SocketAddr)>,
    /// The IAM role's trust policy JSON (aws iam get-role --query Role.AssumeRolePolicyDocument).
    #[arg(long)]
    pub aws_trust_policy: Option<PathBuf>,
    /// The workload identity pool provider, as gcloud iam workload-identity-pools
    /// providers describe --format=json prints it.
    #[arg(long)]
    pub gcp_provider: Option<PathBuf>,
    /// The federated identity credential JSON (issuer, subject, audiences).
    #[arg(long)]
    pub azure_credential: Option<PathBuf>,
    /// The Vault role JSON (vault read -format=json auth/jwt/role/NAME), which may also
    /// hold the auth method's oidc_discovery_url, bound_issuer and jwt_supported_algs.
    #[arg(long)]
    pub vault_role: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FederationPrintArgs {
    #[arg(value_enum)]
    pub provider: PrintProvider,
    /// TOML configuration file; without it, the embedded default.
    #[arg(long, env = "WORKLOAD_ISSUER_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub cluster: String,
    #[arg(long, short = 'n')]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    /// The audience to register; without it, the provider's usual one (sts.amazonaws.com,
    /// the GCP provider's name, api://AzureADTokenExchange, vault).
    #[arg(long)]
    pub audience: Option<String>,
    /// The 12-digit AWS account that holds the role (aws only).
    #[arg(long)]
    pub aws_account: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrintProvider {
    Aws,
    Gcp,
    Azure,
    Vault,
}

impl From<FederationCheckArgs> for CheckOptions {
    fn from(a: FederationCheckArgs) -> CheckOptions {
        CheckOptions {
            issuer: a.issuer,
            providers: a.provider.providers(),
            token: a.token,
            audience: a.audience,
            ca_file: a.ca_file,
            discovery: a.discovery,
            jwks: a.jwks,
            resolve: a.resolve,
            roles: RoleFiles {
                aws_trust_policy: a.aws_trust_policy,
                gcp_provider: a.gcp_provider,
                azure_credential: a.azure_credential,
                vault_role: a.vault_role,
            },
        }
    }
}

impl From<FederationPrintArgs> for PrintOptions {
    fn from(a: FederationPrintArgs) -> PrintOptions {
        PrintOptions {
            provider: match a.provider {
                PrintProvider::Aws => Provider::Aws,
                PrintProvider::Gcp => Provider::Gcp,
                PrintProvider::Azure => Provider::Azure,
                PrintProvider::Vault => Provider::Vault,
            },
            config: a.config,
            cluster: a.cluster,
            namespace: a.namespace,
            service_account: a.service_account,
            audience: a.audience,
            aws_account: a.aws_account,
        }
    }
}

fn parse_resolve(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (host, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not HOST=ADDR:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not ADDR:PORT ({e}), as in 10.0.0.5:443"))?;
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    Ok((host.to_owned(), addr))
}
