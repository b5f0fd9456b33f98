//! `workload-issuer token`: mint once and write the token out (standard
//! output or `--out`, in one of the `output` formats), or keep `--out`
//! fresh with `--refresh`, the file a workload's SDK reads.
//!
//! Mints through `identity`, times renewals with `renewal`; imports nothing
//! of the server side and nothing of clap: `cli` fills `TokenOptions`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use super::identity::{Identity, IdentityOptions};
use super::renewal::{jitter, renewal, seconds, Backoff, Renewal};
use super::signal::Stop;
use super::{fail, ClientError, Format, Issued, Output, SecretOptions, TargetOptions};

/// What `token` is asked to do.
#[derive(Clone, Debug)]
pub struct TokenOptions {
    pub identity: IdentityOptions,
    /// Audiences of the token; the cluster's default when empty.
    pub audiences: Vec<String>,
    /// Write here (atomically) instead of standard output.
    pub out: Option<PathBuf>,
    /// File mode of `out`.
    pub mode: u32,
    pub format: Format,
    /// The API server the output points at; the issuer's own by default.
    pub target: TargetOptions,
    /// The Secret to write, for `Format::Secret`.
    pub secret: SecretOptions,
    /// Keep running and rewrite `out` at 80 % of each token's lifetime.
    pub refresh: bool,
}

/// `workload-issuer token`. Missing parent directories of `--out` are
/// created with mode 0700.
pub async fn run(options: TokenOptions) -> ExitCode {
    let identity = match Identity::new(&options.identity) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    // Every flag of the output is checked before a token is minted.
    let output = match Output::new(
        options.format,
        &options.target,
        &options.secret,
        identity.server(),
        identity.ca_pem.as_deref(),
    ) {
        Ok(o) => o,
        Err(e) => return fail(&e),
    };
    if options.refresh {
        return refresh(&identity, &options, &output).await;
    }
    let issued = match identity.mint(&options.audiences).await {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    // The issuer's word on what it changed, such as a lifetime cut to its
    // maximum: a 48 h request that silently became 24 h surprised people.
    for warning in &issued.warnings {
        eprintln!("warning: {warning}");
    }
    match write_out(&options, &output, &issued) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn write_out(options: &TokenOptions, output: &Output, issued: &Issued) -> Result<(), ClientError> {
    let bytes = output.render(issued)?;
    match &options.out {
        Some(path) => {
            // A raw token file holds the token alone, as kubelet's projected
            // token files do: SDKs send AWS_WEB_IDENTITY_TOKEN_FILE and
            // AZURE_FEDERATED_TOKEN_FILE verbatim, newline included.
            let bytes = match options.format {
                Format::Raw => bytes.trim_ascii_end(),
                _ => &bytes[..],
            };
            // Missing directories are made, private to this user: the
            // README's /run/workload/... need not exist first.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::fsutil::ensure_dir(dir, 0o700).map_err(|e| {
                    ClientError::Input(format!(
                        "--out {}: cannot create the directory {}: {e}",
                        path.display(),
                        dir.display()
                    ))
                })?;
            }
            crate::fsutil::write_atomic(path, bytes, options.mode)
                .map_err(|e| ClientError::Input(format!("--out {}: {e}", path.display())))
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|e| ClientError::Input(format!("standard output: {e}")))
        }
    }
}

/// Keeps `--out` holding a valid token: rewritten at 80 % of each token's
/// life (less a little jitter); on failure the old file stays untouched and
/// the request is retried with backoff. Ends cleanly on SIGTERM or SIGINT.
async fn refresh(identity: &Identity, options: &TokenOptions, output: &Output) -> ExitCode {
    let Some(out) = &options.out else {
        return fail(&ClientError::Input("--refresh needs --out".into()));
    };
    let mut stop = match Stop::listen() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let mut backoff = Backoff::new();
    let mut written: Option<Issued> = None;
    loop {
        let minted = identity.mint(&options.audiences).await;
        if let Ok(issued) = &minted {
            for warning in &issued.warnings {
                tracing::warn!("the issuer warns: {warning}");
            }
        }
        let wait = match minted {
            Ok(issued) => match write_out(options, output, &issued) {
                Ok(()) => {
                    let wait = match renewal(
                        &issued,
                        jitter(issued.life),
                        Instant::now(),
                        &mut backoff,
                    ) {
                        Renewal::In(wait) => wait,
                        Renewal::TooShort(wait) => {
                            tracing::warn!(
                                life = %humantime::format_duration(issued.life),
                                "the token lives too short to renew before it expires; minting again after a backoff"
                            );
                            wait
                        }
                    };
                    tracing::info!(
                        out = %out.display(),
                        expires = %humantime::format_rfc3339_seconds(issued.expires_at),
                        renews_in = %seconds(wait),
                        "token written"
                    );
                    written = Some(issued);
                    wait
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the token; the old file is left as it was");
                    backoff.step()
                }
            },
            Err(e) => {
                let wait = backoff.step();
                let left = written
                    .as_ref()
                    .map(|w| w.expires().saturating_duration_since(Instant::now()));
                tracing::warn!(
                    error = %e,
                    retry_in = %seconds(wait),
                    current_token_valid_for = %left.map(|d| seconds(d).to_string()).unwrap_or_else(|| "-".into()),
                    "renewal failed; the old file is left as it was"
                );
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            name = stop.wait() => {
                tracing::info!("{name}: stopping; the token file stays");
                return ExitCode::SUCCESS;
            }
        }
    }
}
