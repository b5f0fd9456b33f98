//! The signer inside `serve`: one cluster's `ExternalJWTSigner`, answered
//! from its live key set. Every call reads the published set afresh, so a
//! rotation, a revocation or a reload reaches `Sign` and `FetchKeys` at once.
//!
//! The server side of the external signer: serves the protocol of
//! `externaljwt` over a backend that reads `issuer` (the checks and the key,
//! as minting takes it), `metrics` and `signing`. Never imports `http`,
//! `client` or `keys::rotation`, and nothing but `serve` imports it.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tonic::Status;

use crate::externaljwt::proto::{FetchKeysResponse, MetadataResponse, SignJwtResponse};
use crate::externaljwt::{fetch_keys_response, Backend};
use crate::issuer::external::{self, Refusal, SignError, REFRESH_HINT_SECONDS};
use crate::issuer::{Cluster, LiveIssuers};
use crate::metrics::{Metrics, SignOutcome, SignVia};
use crate::signing::SigningTurns;

/// Signs for one cluster, found by its id in the live cluster set on every
/// call: a reloaded config that changes the cluster's settings reaches the
/// signer at once.
pub struct LocalSigner {
    id: String,
    issuers: Arc<LiveIssuers>,
    turns: Arc<SigningTurns>,
    metrics: Arc<Metrics>,
}

impl LocalSigner {
    pub fn new(
        id: String,
        issuers: Arc<LiveIssuers>,
        turns: Arc<SigningTurns>,
        metrics: Arc<Metrics>,
    ) -> Self {
        LocalSigner {
            id,
            issuers,
            turns,
            metrics,
        }
    }

    /// The cluster as served now; UNAVAILABLE once it is no longer served
    /// (its socket is closed as soon as the server sees that).
    fn cluster(&self) -> Result<Arc<Cluster>, Status> {
        self.issuers.load().by_id(&self.id).cloned().ok_or_else(|| {
            Status::unavailable(format!(
                "cluster \"{}\" is no longer served by this issuer",
                self.id
            ))
        })
    }

    fn refused(&self, e: SignError) -> Status {
        let outcome = match e.refusal {
            Refusal::InvalidArgument => SignOutcome::Invalid,
            Refusal::PermissionDenied => SignOutcome::Denied,
            Refusal::FailedPrecondition => SignOutcome::CannotSign,
            Refusal::Internal => SignOutcome::Failed,
        };
        self.metrics.sign(&self.id, SignVia::Socket, outcome);
        tracing::info!(
            cluster = self.id,
            via = "socket",
            reason = e.message,
            "signing request refused"
        );
        status(e)
    }
}

/// The gRPC status for a refusal, with its message.
pub fn status(e: SignError) -> Status {
    match e.refusal {
        Refusal::InvalidArgument => Status::invalid_argument(e.message),
        Refusal::PermissionDenied => Status::permission_denied(e.message),
        Refusal::FailedPrecondition => Status::failed_precondition(e.message),
        Refusal::Internal => Status::internal(e.message),
    }
}

impl Backend for LocalSigner {
    async fn sign(&self, claims: String) -> Result<SignJwtResponse, Status> {
        let cluster = self.cluster()?;
        let published = external::signing_keys(&cluster).map_err(|e| self.refused(e))?;
        let checked = external::check(&cluster, &claims).map_err(|e| self.refused(e))?;
        // RSA takes hundreds of microseconds: in turn, as minting does.
        let signed = if cluster.signs_slowly() {
            self.turns
                .run(|| external::sign(&published, &checked))
                .await
        } else {
            external::sign(&published, &checked)
        }
        .map_err(|e| self.refused(e))?;
        self.metrics
            .sign(&self.id, SignVia::Socket, SignOutcome::Signed);
        tracing::info!(
            cluster = self.id,
            via = "socket",
            namespace = checked.namespace.as_deref().unwrap_or(""),
            kid = signed.kid,
            expiration_seconds = checked.lifetime,
            "token signed for kube-apiserver"
        );
        Ok(SignJwtResponse {
            header: signed.header,
            signature: signed.signature,
        })
    }

    async fn fetch_keys(&self) -> Result<FetchKeysResponse, Status> {
        let data = external::key_data(&self.cluster()?.published()).map_err(|e| {
            tracing::error!(cluster = self.id, error = e.message, "FetchKeys failed");
            status(e)
        })?;
        Ok(fetch_keys_response(
            data.keys.into_iter().map(|k| (k.kid, k.der)),
            data.changed.duration_since(UNIX_EPOCH).unwrap_or_default(),
            REFRESH_HINT_SECONDS,
        ))
    }

    async fn metadata(&self) -> Result<MetadataResponse, Status> {
        let cluster = self.cluster()?;
        Ok(MetadataResponse {
            max_token_expiration_seconds: external::max_lifetime_seconds(&cluster),
        })
    }
}
