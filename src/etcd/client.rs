//! The connection to etcd: endpoints, TLS, user and password, and a
//! deadline on every call, so an unreachable etcd is an error in seconds,
//! never a hang.

use std::time::Duration;

use etcdv3client::grpc::{CredentialInterceptor, TonicClient};
use etcdv3client::pb;
use etcdv3client::Client;

use crate::config::EtcdStoreConfig;

/// How long one call may take before etcd counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub type Service = CredentialInterceptor<TonicClient>;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {endpoints} is unreachable: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoints}: {reason}")]
    Refused { endpoints: String, reason: String },
    #[error("[store] {field}: {reason}")]
    Setting { field: &'static str, reason: String },
}

impl EtcdError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EtcdError::Unreachable { .. })
    }
}

/// A connected client, cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client<Service>,
    pub prefix: String,
    endpoints: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn read_setting(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Setting {
        field,
        reason: format!("{}: {e}", path.display()),
    })
}

impl Etcd {
    /// Connects lazily: the first call finds out whether etcd answers.
    pub async fn connect(config: &EtcdStoreConfig) -> Result<Etcd, EtcdError> {
        // tonic's TLS takes the process's default rustls provider; this
        // crate's is aws-lc-rs everywhere.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let endpoints = config.endpoints.join(",");
        let tls = match &config.tls {
            Some(tls) => {
                let mut c = tonic012::transport::ClientTlsConfig::new().with_native_roots();
                if let Some(ca) = &tls.ca_file {
                    c = c.ca_certificate(tonic012::transport::Certificate::from_pem(read_setting(
                        "ca_file", ca,
                    )?));
                }
                if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                    c = c.identity(tonic012::transport::Identity::from_pem(
                        read_setting("cert_file", cert)?,
                        read_setting("key_file", key)?,
                    ));
                }
                Some(c)
            }
            None => None,
        };
        let mut list = Vec::new();
        for e in &config.endpoints {
            let mut ep = tonic012::transport::Endpoint::from_shared(e.clone())
                .map_err(|err| EtcdError::Setting {
                    field: "endpoints",
                    reason: format!("{e}: {err}"),
                })?
                .connect_timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .keep_alive_while_idle(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(CALL_TIMEOUT);
            if let Some(tls) = &tls {
                ep = ep
                    .tls_config(tls.clone())
                    .map_err(|err| EtcdError::Setting {
                        field: "ca_file",
                        reason: err.to_string(),
                    })?;
            }
            list.push(ep);
        }
        let channel = tonic012::transport::Channel::balance_list(list.into_iter());
        let credential =
            match (&config.username, &config.password_file) {
                (Some(user), Some(file)) => {
                    let password = String::from_utf8(read_setting("password_file", file)?)
                        .map_err(|_| EtcdError::Setting {
                            field: "password_file",
                            reason: format!("{} is not UTF-8", file.display()),
                        })?;
                    Some((
                        user.clone(),
                        password.trim_end_matches(['\n', '\r']).to_owned(),
                    ))
                }
                _ => None,
            };
        let mut etcd = Etcd {
            client: Client::with_service(CredentialInterceptor::new(
                credential.clone(),
                None,
                TonicClient::new(channel.clone()),
            )),
            prefix: config.prefix.clone(),
            endpoints,
        };
        if let Some((user, password)) = credential {
            // The token first: every later call carries it.
            let mut plain = Client::with_service(CredentialInterceptor::new(
                None,
                None,
                TonicClient::new(channel.clone()),
            ));
            let request = pb::AuthenticateRequest {
                name: user.clone(),
                password: password.clone(),
            };
            let reply = etcd
                .deadline("authenticating", plain.auth.authenticate(request))
                .await?;
            let token = reply
                .token
                .parse()
                .map_err(|_| etcd.refused("etcd returned an unusable auth token"))?;
            etcd.client = Client::with_service(CredentialInterceptor::new(
                Some((user, password)),
                Some(token),
                TonicClient::new(channel),
            ));
        }
        Ok(etcd)
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn refused(&self, reason: impl Into<String>) -> EtcdError {
        EtcdError::Refused {
            endpoints: self.endpoints.clone(),
            reason: reason.into(),
        }
    }

    /// Runs one call under [`CALL_TIMEOUT`], naming what it was for.
    pub async fn deadline<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, EtcdError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let full = e.to_string();
                let text = concise(&full);
                let unavailable = [
                    "Unavailable",
                    "transport",
                    "connect",
                    "Connection",
                    "timed out",
                    "deadline",
                    "broken pipe",
                    "h2 protocol",
                    "Cancelled",
                ]
                .iter()
                .any(|w| full.contains(w));
                if unavailable {
                    Err(EtcdError::Unreachable {
                        endpoints: self.endpoints.clone(),
                        reason: format!("{what}: {text}"),
                    })
                } else {
                    Err(self.refused(format!("{what}: {text}")))
                }
            }
            Err(_) => Err(EtcdError::Unreachable {
                endpoints: self.endpoints.clone(),
                reason: format!("{what}: no answer within {CALL_TIMEOUT:?}"),
            }),
        }
    }

    /// Runs `call` under [`deadline`](Self::deadline), again when it could
    /// not connect (the request never left: a member that is down, picked
    /// by the balancer before it noticed), once per endpoint.
    pub async fn retrying<T, E, F>(
        &self,
        what: &str,
        mut call: impl FnMut() -> F,
    ) -> Result<T, EtcdError>
    where
        E: std::fmt::Display,
        F: std::future::Future<Output = Result<T, E>>,
    {
        let mut tries = self.endpoints.split(',').count() + 1;
        loop {
            match self.deadline(what, call()).await {
                Err(EtcdError::Unreachable { reason, .. })
                    if tries > 1 && reason.contains("connect error") =>
                {
                    tries -= 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Every key and value in `[start, end)` (one key if `end` is empty).
    pub async fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<pb::RangeResponse, EtcdError> {
        let request = pb::RangeRequest {
            key: start,
            range_end: end,
            ..Default::default()
        };
        self.retrying("reading", || {
            let mut kv = self.client.kv.clone();
            let request = request.clone();
            async move { kv.range(request).await }
        })
        .await
    }

    /// Whether etcd answers a linearizable read (a quorum with a leader:
    /// what a commit needs). Two tries, so a connection to a member just
    /// lost is not the answer.
    pub async fn probe(&self, key: Vec<u8>) -> Result<(), EtcdError> {
        let mut last = None;
        for _ in 0..2 {
            let kv = self.client.kv.clone();
            let request = pb::RangeRequest {
                key: key.clone(),
                count_only: true,
                ..Default::default()
            };
            match self
                .retrying("probing", || {
                    let mut kv = kv.clone();
                    let request = request.clone();
                    async move { kv.range(request).await }
                })
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("two tries"))
    }

    /// Every key and value in `[start, end)`, read in pages at one
    /// revision (a single reply is capped at 4 MiB by gRPC); with the
    /// revision read at.
    pub async fn range_all(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> Result<(Vec<pb::KeyValue>, i64), EtcdError> {
        const PAGE: i64 = 500;
        let kv = self.client.kv.clone();
        let mut all = Vec::new();
        let mut from = start;
        let mut revision = 0;
        loop {
            let request = pb::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
                ..Default::default()
            };
            let reply = self
                .retrying("reading", || {
                    let mut kv = kv.clone();
                    let request = request.clone();
                    async move { kv.range(request).await }
                })
                .await?;
            if revision == 0 {
                revision = reply.header.as_ref().map_or(0, |h| h.revision);
            }
            let more = reply.more;
            if let Some(last) = reply.kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            all.extend(reply.kvs);
            if !more {
                return Ok((all, revision));
            }
        }
    }

    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.retrying("committing", || {
            let mut kv = self.client.kv.clone();
            let request = request.clone();
            async move { kv.txn(request).await }
        })
        .await
    }

    pub fn client(&self) -> Client<Service> {
        self.client.clone()
    }
}

/// The words of a gRPC failure without tonic's debug dump: the status's
/// message and its causes' (`tcp connect error: Connection refused`,
/// `transport error: received fatal alert: BadCertificate`).
fn concise(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut found: Vec<(usize, &str)> = Vec::new();
    for key in ["message: \"", "error: \"", "ConnectError(\""] {
        for (i, _) in text.match_indices(key) {
            let rest = &text[i + key.len()..];
            if let Some(end) = rest.find('"') {
                found.push((i, &rest[..end]));
            }
        }
    }
    found.sort_by_key(|(i, _)| *i);
    for (_, part) in found {
        if !part.is_empty() && !parts.contains(&part) {
            parts.push(part);
        }
    }
    if parts.is_empty() {
        text.to_owned()
    } else {
        parts.join(": ")
    }
}

/// A compare: the key's modification revision is `rev` (0: it is absent).
pub fn mod_revision_is(key: Vec<u8>, rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(rev)),
    }
}

pub fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

pub fn delete(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

pub fn get(key: Vec<u8>, end: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
            key,
            range_end: end,
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::concise;

    #[test]
    fn a_grpc_failure_reads_as_its_words() {
        let refused = r#"[Grpc] Status { code: Unavailable, message: "tcp connect error", source: Some(tonic::transport::Error(Transport, ConnectError(ConnectError("tcp connect error", 127.0.0.1:9, Os { code: 111, kind: ConnectionRefused, message: "Connection refused" })))) }"#;
        assert_eq!(concise(refused), "tcp connect error: Connection refused");
        let tls = r#"[Grpc] Status { code: Unknown, message: "transport error", source: Some(tonic::transport::Error(Transport, hyper::Error(Io, Custom { kind: InvalidData, error: "received fatal alert: BadCertificate" }))) }"#;
        assert_eq!(
            concise(tls),
            "transport error: received fatal alert: BadCertificate"
        );
        assert_eq!(concise("plain words"), "plain words");
    }
}
