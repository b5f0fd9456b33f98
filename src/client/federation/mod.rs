//! `workload-issuer federation check` and `federation print`: whether AWS,
//! GCP, Azure and Vault would accept an issuer and a token, rule by rule,
//! before any cloud is touched; and the trust policy or commands that
//! register a cluster with each of them.
//!
//! - `fetch`: discovery and the JWKS, over HTTP (the client's TLS and
//!   `--ca-file`) or from an `export` bundle;
//! - `token`: the token's header and claims, read without verifying (a
//!   signature is `verify`'s concern);
//! - `rules`: each provider's rules on the issuer, the JWKS and the token;
//! - `roles`: each provider's role side (trust policy, attribute mapping and
//!   condition, federated credential, Vault role) evaluated against the token;
//! - `print`: what to paste into each provider, from the configuration.
//!
//! Client side: must not import the server side (`server`, `serve`, `http`,
//! `issuer`, `keys`, `health`, `metrics`) nor clap. `print` reads the
//! configuration (`config`, the bottom layer) for a cluster's issuer,
//! algorithm and audiences.

mod fetch;
mod glob;
mod print;
mod roles;
mod rules;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use super::{read_flag_file, ClientError};

pub use fetch::Documents;
pub use print::{print, render, PrintOptions};
pub use token::Token;

/// A relying party whose rules are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
    Vault,
}

impl Provider {
    pub const ALL: [Provider; 4] = [
        Provider::Aws,
        Provider::Gcp,
        Provider::Azure,
        Provider::Vault,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
            Provider::Vault => "vault",
        }
    }
}

/// What `federation check` is asked to check.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// The issuer URL as registered with the provider; with `discovery`,
    /// the bundle's own issuer when `None`.
    pub issuer: Option<String>,
    pub providers: Vec<Provider>,
    /// The token, a file holding it, or `-` for standard input.
    pub token: Option<String>,
    /// The audience the provider is set up to accept; each provider's
    /// default (or its role file's) when `None`.
    pub audience: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// An exported discovery document and JWKS, checked instead of fetching.
    pub discovery: Option<PathBuf>,
    pub jwks: Option<PathBuf>,
    /// Hosts to connect to at a given address instead of the one DNS
    /// gives (an issuer whose DNS does not point at it yet).
    pub resolve: Vec<(String, SocketAddr)>,
    pub roles: RoleFiles,
}

/// The role side's files, as each provider's own tools print them.
#[derive(Clone, Debug, Default)]
pub struct RoleFiles {
    pub aws_trust_policy: Option<PathBuf>,
    pub gcp_provider: Option<PathBuf>,
    pub azure_credential: Option<PathBuf>,
    pub vault_role: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not checked, for want of an input (the token, a role file).
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// The outcome of one rule: the value it saw, and what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `<provider>.<rule>`, as in deploy/federation.md's table.
    pub rule: &'static str,
    pub status: Status,
    pub seen: String,
    /// Empty on a pass.
    pub change: String,
}

impl Finding {
    pub(crate) fn pass(rule: &'static str, seen: impl Into<String>) -> Finding {
        Finding {
            rule,
            status: Status::Pass,
            seen: seen.into(),
            change: String::new(),
        }
    }

    pub(crate) fn fail(
        rule: &'static str,
        seen: impl Into<String>,
        change: impl Into<String>,
    ) -> Finding {
        Finding {
            rule,
            status: Status::Fail,
            seen: seen.into(),
            change: change.into(),
        }
    }

    pub(crate) fn warn(
        rule: &'static str,
        seen: impl Into<String>,
        change: impl Into<String>,
    ) -> Finding {
        Finding {
            rule,
            status: Status::Warn,
            seen: seen.into(),
            change: change.into(),
        }
    }

    pub(crate) fn skip(rule: &'static str, why: impl Into<String>) -> Finding {
        Finding {
            rule,
            status: Status::Skip,
            seen: String::new(),
            change: why.into(),
        }
    }

    /// `pass` when `ok`, else `fail` with `change`.
    pub(crate) fn check(
        rule: &'static str,
        ok: bool,
        seen: impl Into<String>,
        change: impl Into<String>,
    ) -> Finding {
        if ok {
            Finding::pass(rule, seen)
        } else {
            Finding::fail(rule, seen, change)
        }
    }

    /// One line: status, rule, the value seen, and what to change.
    pub fn line(&self) -> String {
        let mut line = format!("{:<4} {:<24}", self.status.label(), self.rule);
        if !self.seen.is_empty() {
            line.push_str(" saw ");
            line.push_str(&self.seen);
        }
        if !self.change.is_empty() {
            line.push_str(if self.seen.is_empty() { " " } else { "; " });
            line.push_str(&self.change);
        }
        line
    }
}

/// Everything the rules look at: the issuer URL, its documents, the token
/// and the role files, at `now` (Unix seconds).
pub struct Subject<'a> {
    pub issuer: &'a str,
    pub documents: &'a Documents,
    pub token: Option<&'a Token>,
    pub audience: Option<&'a str>,
    pub roles: &'a roles::Roles,
    pub now: i64,
}

/// Checks the issuer, its documents and the token against each provider's
/// rules.
pub async fn check(
    http: &reqwest::Client,
    options: &CheckOptions,
    now: SystemTime,
) -> Result<Vec<Finding>, ClientError> {
    let documents = match (&options.discovery, &options.jwks) {
        (Some(d), Some(j)) => Documents::from_files(d, j)?,
        (None, None) => {
            let issuer = options.issuer.as_deref().ok_or_else(|| {
                ClientError::Input("--issuer is required unless --discovery and --jwks are".into())
            })?;
            Documents::fetch(http, issuer).await?
        }
        _ => {
            return Err(ClientError::Input(
                "--discovery and --jwks go together: give both files of the export bundle".into(),
            ))
        }
    };
    let issuer = match &options.issuer {
        Some(i) => i.clone(),
        None => documents.issuer().unwrap_or_default().to_owned(),
    };
    let token = match &options.token {
        Some(arg) => Some(Token::parse(&super::verify::read_token(arg)?)?),
        None => None,
    };
    let roles = roles::Roles::load(&options.roles)?;
    let subject = Subject {
        issuer: &issuer,
        documents: &documents,
        token: token.as_ref(),
        audience: options.audience.as_deref(),
        roles: &roles,
        now: crate::clock::unix_seconds(now) as i64,
    };
    let mut findings = Vec::new();
    for p in &options.providers {
        findings.extend(match p {
            Provider::Aws => rules::aws::check(&subject),
            Provider::Gcp => rules::gcp::check(&subject),
            Provider::Azure => rules::azure::check(&subject),
            Provider::Vault => rules::vault::check(&subject),
        });
    }
    Ok(findings)
}

/// `workload-issuer federation check`: one line per rule; exit 0 only when
/// nothing fails, 1 when a rule fails, 2 for bad input.
pub async fn run_check(options: CheckOptions) -> ExitCode {
    let ca = match &options.ca_file {
        Some(p) => match read_flag_file("--ca-file", p) {
            Ok(pem) => Some(pem),
            Err(e) => return super::fail(&e),
        },
        None => None,
    };
    let http = match http_client_resolving(ca.as_deref(), &options.resolve) {
        Ok(h) => h,
        Err(e) => return super::fail(&e),
    };
    let findings = match check(&http, &options, crate::clock::system_now()).await {
        Ok(f) => f,
        Err(e) => return super::fail(&e),
    };
    for f in &findings {
        println!("{}", f.line());
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    let warned = findings.iter().filter(|f| f.status == Status::Warn).count();
    println!(
        "{} rule(s): {failed} failed, {warned} warned",
        findings.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The client's HTTP client, sending the named hosts to the given addresses.
pub fn http_client_resolving(
    ca_pem: Option<&[u8]>,
    resolve: &[(String, SocketAddr)],
) -> Result<reqwest::Client, ClientError> {
    super::client_builder(ca_pem).and_then(|mut b| {
        for (host, addr) in resolve {
            b = b.resolve(host, *addr);
        }
        b.build().map_err(|e| ClientError::Input(e.to_string()))
    })
}
