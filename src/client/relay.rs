//! `workload-issuer kubernetes-signer`: Kubernetes' external token signer
//! (REFERENCE §9) for a kube-apiserver on another machine than the issuer.
//! It serves the `ExternalJWTSigner` socket there and relays each call to
//! the issuer API's signing endpoints (`<issuer URL>/externaljwt/v1/sign`
//! and `/keys`), authenticated like minting (a bearer token, a client
//! certificate or both, `credentials`). It holds no signing key.
//!
//! When the issuer cannot be reached, `Sign` answers UNAVAILABLE (which
//! kube-apiserver retries) and `FetchKeys` and `Metadata` answer from the
//! last good copy, so tokens already issued keep verifying.
//!
//! Client side: imports the protocol of `externaljwt` (messages, the gRPC
//! adapter and its socket), never `signer` or anything of the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use tonic::{Code, Status};

use super::{
    fail, read_flag_file, request_error, ApiClient, AuthOptions, ClientError, Credentials,
};
use crate::externaljwt::proto::{FetchKeysResponse, MetadataResponse, SignJwtResponse};
use crate::externaljwt::{self, fetch_keys_response, Backend};

/// The issuer's endpoints, under the cluster's issuer URL.
const SIGN_PATH: &str = "/externaljwt/v1/sign";
const KEYS_PATH: &str = "/externaljwt/v1/keys";
/// Within kube-apiserver's deadlines: 10 s for Metadata, 60 s for the rest.
const KEYS_TIMEOUT: Duration = Duration::from_secs(8);
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// The least `max_token_expiration_seconds` kube-apiserver accepts.
const MIN_MAX_TOKEN_EXPIRATION: i64 = 600;

#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// The cluster's issuer URL on the issuer's API listener.
    pub server: String,
    /// How to authenticate to the issuer's API.
    pub auth: AuthOptions,
    /// PEM CA bundle to trust; the system's roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Where kube-apiserver dials (`--service-account-signing-endpoint`).
    pub socket: PathBuf,
    /// A group that may connect too (mode 0660 instead of 0600).
    pub socket_group: Option<String>,
}

/// What the keys endpoint answers.
#[derive(Clone, Debug, Deserialize)]
struct KeysAnswer {
    keys: Vec<KeyAnswer>,
    data_timestamp: u64,
    refresh_hint_seconds: i64,
    max_token_expiration_seconds: i64,
}

#[derive(Clone, Debug, Deserialize)]
struct KeyAnswer {
    key_id: String,
    key: String,
}

#[derive(Deserialize)]
struct SignAnswer {
    header: String,
    signature: String,
}

/// The body of a refusal: the signing endpoint's `{"code","message"}`, or
/// the API's Status `{"message"}`, whose `code` is the HTTP status number.
#[derive(Deserialize)]
struct Refusal {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

pub struct Relay {
    client: ApiClient,
    server: String,
    credentials: Credentials,
    /// The last keys the issuer gave, for when it cannot be reached.
    last_good: Mutex<Option<FetchKeysAnswer>>,
}

/// A checked keys answer, ready for `FetchKeys` and `Metadata`.
#[derive(Clone, Debug)]
struct FetchKeysAnswer {
    response: FetchKeysResponse,
    max_token_expiration_seconds: i64,
}

impl Relay {
    pub fn new(options: &RelayOptions) -> Result<Relay, ClientError> {
        let url = url::Url::parse(&options.server)
            .ok()
            .filter(|u| u.scheme() == "https" || u.scheme() == "http")
            .ok_or_else(|| {
                ClientError::Input(format!(
                    "--server: {:?} is not an http(s) URL",
                    options.server
                ))
            })?;
        // The relay's credential signs any token of the cluster: it never
        // crosses a network in clear.
        if url.scheme() == "http" && !url.host().is_some_and(|h| super::target::is_loopback(&h)) {
            return Err(ClientError::Input(format!(
                "--server: {:?} is plain http to another machine; the relay's credential \
                 would cross the network in clear: use https (http is accepted only for a \
                 loopback host)",
                options.server
            )));
        }
        let ca_pem = match &options.ca_file {
            Some(p) => Some(read_flag_file("--ca-file", p)?),
            None => None,
        };
        // Fails early on an unreadable bearer file or a bad certificate.
        let credentials = Credentials::new(&options.auth)?;
        Ok(Relay {
            client: credentials.http_client(ca_pem.as_deref())?,
            server: options.server.trim_end_matches('/').to_owned(),
            credentials,
            last_good: Mutex::new(None),
        })
    }

    /// Sends `request` with the bearer token, if any; the body of a 2xx
    /// answer, or the gRPC status for what went wrong.
    async fn call(&self, request: reqwest::RequestBuilder, url: &str) -> Result<Vec<u8>, Status> {
        let bearer = self
            .credentials
            .bearer()
            .map_err(|e| Status::unavailable(format!("the relay: {e}")))?;
        let request = match bearer {
            Some(bearer) => request.bearer_auth(bearer),
            None => request,
        };
        let response = self.client.send(request).await.map_err(|failure| {
            // Refused in the handshake: the relay's certificate, which
            // trying again will not change.
            if failure.certificate_refused {
                return Status::unauthenticated(format!(
                    "the issuer at {url} refused the relay's certificate: {}",
                    failure.reason
                ));
            }
            Status::unavailable(format!(
                "the issuer at {url} cannot be reached: {}",
                failure.reason
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            Status::unavailable(format!(
                "the issuer's answer from {url} was cut: {}",
                request_error(&e)
            ))
        })?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let refusal = serde_json::from_slice::<Refusal>(&body).ok();
        let message = refusal
            .as_ref()
            .and_then(|r| r.message.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(300).collect());
        let code = match refusal
            .as_ref()
            .and_then(|r| r.code.as_ref())
            .and_then(serde_json::Value::as_str)
        {
            Some("InvalidArgument") => Code::InvalidArgument,
            Some("PermissionDenied") => Code::PermissionDenied,
            Some("FailedPrecondition") => Code::FailedPrecondition,
            Some("Internal") => Code::Internal,
            _ => match status.as_u16() {
                400 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                429 => Code::ResourceExhausted,
                _ => Code::Unavailable,
            },
        };
        let hint = match (code, self.credentials.unauthenticated_hint()) {
            (Code::Unauthenticated, Some(hint)) => format!("; {hint}"),
            _ => String::new(),
        };
        Err(Status::new(
            code,
            format!("the issuer refused ({}): {message}{hint}", status.as_u16()),
        ))
    }

    /// Asks the issuer for the keys; keeps them as the last good copy.
    async fn fetch(&self) -> Result<FetchKeysAnswer, Status> {
        let url = format!("{}{KEYS_PATH}", self.server);
        let body = self
            .call(self.client.http().get(&url).timeout(KEYS_TIMEOUT), &url)
            .await?;
        let answer: KeysAnswer = serde_json::from_slice(&body).map_err(|e| {
            Status::unavailable(format!(
                "the issuer's keys from {url} are not as expected: {e}"
            ))
        })?;
        let keys = answer
            .keys
            .into_iter()
            .map(|k| {
                let der = STANDARD.decode(&k.key).map_err(|e| {
                    Status::unavailable(format!("key {} from {url} is not base64: {e}", k.key_id))
                })?;
                Ok((k.key_id, der))
            })
            .collect::<Result<Vec<_>, Status>>()?;
        if keys.is_empty() || answer.refresh_hint_seconds <= 0 {
            return Err(Status::unavailable(format!(
                "the issuer's keys from {url} are unusable: no keys or no refresh hint"
            )));
        }
        let fresh = FetchKeysAnswer {
            response: fetch_keys_response(
                keys,
                Duration::from_secs(answer.data_timestamp),
                answer.refresh_hint_seconds,
            ),
            max_token_expiration_seconds: answer.max_token_expiration_seconds,
        };
        *self.last_good.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// The keys now, or the last good copy when the issuer fails to answer.
    async fn keys(&self) -> Result<FetchKeysAnswer, Status> {
        match self.fetch().await {
            Ok(fresh) => Ok(fresh),
            // A refusal (credentials revoked, the cluster gone) is an answer,
            // not an outage: kube-apiserver sees it, and keeps the keys it
            // has meanwhile.
            Err(e) if e.code() != Code::Unavailable => Err(e),
            Err(e) => {
                let kept = self
                    .last_good
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match kept {
                    Some(kept) => {
                        tracing::warn!(error = e.message(), "answering from the last good keys");
                        Ok(kept)
                    }
                    None => {
                        tracing::warn!(error = e.message(), "no keys to answer with yet");
                        Err(e)
                    }
                }
            }
        }
    }
}

impl Backend for Relay {
    async fn sign(&self, claims: String) -> Result<SignJwtResponse, Status> {
        let url = format!("{}{SIGN_PATH}", self.server);
        let request = self
            .client
            .http()
            .post(&url)
            .timeout(SIGN_TIMEOUT)
            .json(&serde_json::json!({ "claims": claims }));
        let body = self.call(request, &url).await.inspect_err(|e| {
            tracing::info!(code = ?e.code(), error = e.message(), "Sign refused");
        })?;
        let answer: SignAnswer = serde_json::from_slice(&body).map_err(|e| {
            Status::unavailable(format!(
                "the issuer's signature from {url} is not as expected: {e}"
            ))
        })?;
        Ok(SignJwtResponse {
            header: answer.header,
            signature: answer.signature,
        })
    }

    async fn fetch_keys(&self) -> Result<FetchKeysResponse, Status> {
        self.keys().await.map(|k| k.response)
    }

    async fn metadata(&self) -> Result<MetadataResponse, Status> {
        let max = self.keys().await?.max_token_expiration_seconds;
        // REFERENCE §9: kube-apiserver exits on less; say why here instead.
        if max < MIN_MAX_TOKEN_EXPIRATION {
            return Err(Status::failed_precondition(format!(
                "the cluster's max_token_lifetime is {max} s, under the {MIN_MAX_TOKEN_EXPIRATION} s \
                 kube-apiserver requires of an external signer: raise it in the issuer's config"
            )));
        }
        Ok(MetadataResponse {
            max_token_expiration_seconds: max,
        })
    }
}

/// Runs the relay until SIGTERM or SIGINT; the socket is removed on exit.
pub async fn run(options: RelayOptions) -> ExitCode {
    match serve(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// What the relay says at start when the issuer gave it no keys: a refusal
/// is a setting to fix (--token-file, --server's path), not a wait.
fn no_keys_yet(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated => {
            "the issuer refused the relay's bearer token: check --token-file; \
             FetchKeys fails, and kube-apiserver will not start, until it is accepted"
        }
        Code::PermissionDenied => {
            "the issuer refused the relay's API client for this cluster: give it the \
             cluster in its clusters; FetchKeys fails until then"
        }
        Code::NotFound => {
            "the issuer has no cluster at --server's path: give the cluster's issuer \
             URL on the API listener; FetchKeys fails until then"
        }
        _ => {
            "the issuer does not answer yet: FetchKeys fails, and kube-apiserver \
              will not start, until it does"
        }
    }
}

async fn serve(options: RelayOptions) -> Result<(), ClientError> {
    let relay = Arc::new(Relay::new(&options)?);
    let mut stop = super::signal::Stop::listen()?;
    // kube-apiserver will not start before FetchKeys succeeds: say early
    // whether the issuer answers, but serve either way.
    match relay.fetch().await {
        Ok(k) => tracing::info!(keys = k.response.keys.len(), "the issuer answers"),
        Err(e) => tracing::warn!(error = e.message(), "{}", no_keys_yet(e.code())),
    }
    let gid = match &options.socket_group {
        Some(g) => Some(
            externaljwt::group_id(g)
                .map_err(|e| ClientError::Input(format!("--socket-group: {e}")))?,
        ),
        None => None,
    };
    let socket = externaljwt::bind(&options.socket, gid)
        .await
        .map_err(|e| ClientError::Input(format!("--socket: {e}")))?;
    tracing::info!(
        server = options.server,
        "external token signer (ExternalJWTSigner v1, v1alpha1) relaying on unix://{}",
        options.socket.display()
    );
    let mut signal = None;
    let served = externaljwt::serve(socket, relay, async {
        signal = Some(stop.wait().await);
    })
    .await;
    if let Some(name) = signal {
        tracing::info!("{name}: stopped");
    }
    served.map_err(|e| ClientError::Input(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_at_start_names_the_setting_to_fix_not_a_wait() {
        assert!(no_keys_yet(Code::Unauthenticated).contains("--token-file"));
        assert!(no_keys_yet(Code::PermissionDenied).contains("clusters"));
        assert!(no_keys_yet(Code::NotFound).contains("--server"));
        for refused in [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
        ] {
            assert!(!no_keys_yet(refused).contains("does not answer"));
        }
        assert!(no_keys_yet(Code::Unavailable).contains("does not answer yet"));
    }
}
