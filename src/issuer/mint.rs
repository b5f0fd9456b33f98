//! Minting: a validated TokenRequest becomes a signed JWT.
//!
//! The rules are Kubernetes' (pkg/registry/core/serviceaccount/storage/token.go):
//! audiences default to the cluster's; `expirationSeconds` defaults to 3600,
//! is refused below the minimum and cut to the maximum with a warning. Errors
//! name the field the way kube-apiserver does, so kubectl users recognise them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use uuid::Uuid;

use super::claims::{service_account_uid, subject, Claims, KubernetesClaims, ObjectRef};
use super::cluster::Cluster;
use crate::k8s::names::{
    check_audience, is_dns_label, is_dns_subdomain, DNS_LABEL_RULE, DNS_SUBDOMAIN_RULE,
};

pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Most audiences one token may carry.
pub const MAX_AUDIENCES: usize = 32;
const MAX_UID_LEN: usize = 128;

/// What a TokenRequest asks for, decoded from JSON or protobuf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MintRequest {
    pub namespace: String,
    pub name: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: Option<i64>,
    pub bound: Option<BoundObjectRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundObjectRef {
    pub kind: String,
    pub api_version: Option<String>,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundKind {
    Pod,
    Secret,
    Node,
}

/// A minted token and what it was minted with.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: String,
    pub claims: Claims,
    pub kid: String,
    /// The effective lifetime, after defaulting and shortening.
    pub expiration_seconds: i64,
    pub expires_at: SystemTime,
    /// Set when the requested lifetime was shortened.
    pub warning: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// The request is wrong; `field` is its path, as Kubernetes prints it.
    #[error("{field}: {detail}")]
    Invalid { field: String, detail: String },
    #[error("signing failed")]
    Signing,
}

fn invalid(field: impl Into<String>, detail: impl Into<String>) -> MintError {
    MintError::Invalid {
        field: field.into(),
        detail: detail.into(),
    }
}

/// Seconds since the epoch; times before it are clamped to 0.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Checks the namespace and service-account name from the URL.
pub fn validate_names(namespace: &str, name: &str) -> Result<(), MintError> {
    if !is_dns_label(namespace) {
        return Err(invalid(
            "metadata.namespace",
            format!("Invalid value: {}: {DNS_LABEL_RULE}", quote(namespace)),
        ));
    }
    if !is_dns_subdomain(name) {
        return Err(invalid(
            "metadata.name",
            format!("Invalid value: {}: {DNS_SUBDOMAIN_RULE}", quote(name)),
        ));
    }
    Ok(())
}

/// JSON-quotes a value for an error message, so control characters and
/// quotes in hostile input are shown escaped.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn validate_bound(b: &BoundObjectRef) -> Result<BoundKind, MintError> {
    let kind = match b.kind.as_str() {
        "Pod" => BoundKind::Pod,
        "Secret" => BoundKind::Secret,
        "Node" => BoundKind::Node,
        other => {
            return Err(invalid(
                "spec.boundObjectRef.kind",
                format!(
                    "Unsupported value: {}: supported values: \"Pod\", \"Secret\", \"Node\"",
                    quote(other)
                ),
            ))
        }
    };
    if let Some(v) = &b.api_version {
        if v != "v1" {
            return Err(invalid(
                "spec.boundObjectRef.apiVersion",
                format!("Unsupported value: {}: supported values: \"v1\"", quote(v)),
            ));
        }
    }
    if b.name.is_empty() {
        return Err(invalid("spec.boundObjectRef.name", "Required value"));
    }
    if !is_dns_subdomain(&b.name) {
        return Err(invalid(
            "spec.boundObjectRef.name",
            format!("Invalid value: {}: {DNS_SUBDOMAIN_RULE}", quote(&b.name)),
        ));
    }
    // Kubernetes reads the uid from the bound object; this issuer has no
    // objects to read, so the caller must say it.
    if b.uid.is_empty() {
        return Err(invalid(
            "spec.boundObjectRef.uid",
            "Required value: this issuer keeps no objects, so a bound token needs the object's uid",
        ));
    }
    if b.uid.len() > MAX_UID_LEN || b.uid.chars().any(|c| c.is_control()) {
        return Err(invalid(
            "spec.boundObjectRef.uid",
            format!("Invalid value: must be at most {MAX_UID_LEN} printable characters"),
        ));
    }
    Ok(kind)
}

/// Validates `req` against `cluster`'s rules and signs a token with its
/// current key. `now` is passed in so tests control the clock.
pub fn mint(cluster: &Cluster, req: &MintRequest, now: SystemTime) -> Result<Minted, MintError> {
    let cfg = &cluster.config;
    validate_names(&req.namespace, &req.name)?;

    let audiences = if req.audiences.is_empty() {
        cfg.audiences.clone()
    } else {
        if req.audiences.len() > MAX_AUDIENCES {
            return Err(invalid(
                "spec.audiences",
                format!(
                    "Too many: {}: must have at most {MAX_AUDIENCES} items",
                    req.audiences.len()
                ),
            ));
        }
        for (i, aud) in req.audiences.iter().enumerate() {
            check_audience(aud).map_err(|why| {
                invalid(
                    format!("spec.audiences[{i}]"),
                    format!("Invalid value: {why}"),
                )
            })?;
        }
        req.audiences.clone()
    };

    let min = cfg.min_token_lifetime.as_secs() as i64;
    let max = cfg.max_token_lifetime.as_secs() as i64;
    let requested = req.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if requested < min {
        return Err(invalid(
            "spec.expirationSeconds",
            format!(
                "Invalid value: {requested}: may not specify a duration less than {}",
                humantime::format_duration(Duration::from_secs(min as u64))
            ),
        ));
    }
    let (lifetime, warning) = if requested > max {
        (
            max,
            Some(format!(
                "requested expiration of {requested} seconds shortened to {max} seconds"
            )),
        )
    } else {
        (requested, None)
    };

    let bound = match &req.bound {
        Some(b) => Some((validate_bound(b)?, b)),
        None => None,
    };
    let object = |b: &BoundObjectRef| ObjectRef {
        name: b.name.clone(),
        uid: b.uid.clone(),
    };
    let (mut pod, mut secret, mut node) = (None, None, None);
    match bound {
        Some((BoundKind::Pod, b)) => pod = Some(object(b)),
        Some((BoundKind::Secret, b)) => secret = Some(object(b)),
        Some((BoundKind::Node, b)) => node = Some(object(b)),
        None => {}
    }

    let iat = unix_seconds(now);
    let exp = iat + lifetime;
    let claims = Claims {
        aud: audiences,
        exp,
        iat,
        iss: cfg.issuer.clone(),
        jti: Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaims {
            namespace: req.namespace.clone(),
            node,
            pod,
            secret,
            serviceaccount: ObjectRef {
                name: req.name.clone(),
                uid: service_account_uid(&cfg.issuer, &req.namespace, &req.name),
            },
        },
        nbf: iat,
        sub: subject(&req.namespace, &req.name),
    };

    let published = cluster.published();
    let signer = published.keys.signer();
    let payload = serde_json::to_vec(&claims).map_err(|_| MintError::Signing)?;
    let mut token = String::with_capacity(published.header_b64.len() + payload.len() * 4 / 3 + 400);
    token.push_str(&published.header_b64);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
    let signature = signer
        .sign(token.as_bytes())
        .map_err(|_| MintError::Signing)?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&signature, &mut token);

    Ok(Minted {
        token,
        kid: signer.kid().to_owned(),
        expiration_seconds: lifetime,
        expires_at: UNIX_EPOCH + Duration::from_secs(exp.max(0) as u64),
        warning,
        claims,
    })
}
