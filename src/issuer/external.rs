//! Signing for Kubernetes' external token signer (REFERENCE §9, KEP-740):
//! kube-apiserver builds a token's claims itself and asks only for a header
//! and a signature. The same checks and the same key serve the Unix-socket
//! signer (`signer`) and the issuer API's signing endpoint (`http::sign`),
//! which the relay (`client::relay`) calls.
//!
//! The claims are signed exactly as given: checked, never rewritten. The key
//! is taken in one place, [`signing_keys`], as minting takes its own. Knows
//! nothing of gRPC
//! or HTTP; the refusal kinds are named after gRPC's codes because that is
//! what kube-apiserver reads.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

use std::sync::Arc;

use super::cluster::{Cluster, Published};
use crate::keys::material::SigningKey;

/// Largest payload accepted, encoded. A Kubernetes token's is about 1 KiB.
pub const MAX_CLAIMS: usize = 64 * 1024;

/// How often kube-apiserver should ask for the keys again. A rotation
/// publishes the next key `publish_ahead` before it signs, so a minute is
/// far inside that; a token with an unknown kid makes it ask at once anyway.
pub const REFRESH_HINT_SECONDS: i64 = 60;

/// What kind of refusal, as gRPC status codes name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The claims are malformed.
    InvalidArgument,
    /// Well-formed claims this cluster will not sign (issuer, lifetime).
    PermissionDenied,
    /// The cluster cannot sign at all (no private key).
    FailedPrecondition,
    /// Signing failed here.
    Internal,
}

impl Refusal {
    /// The gRPC name (`google.rpc.Code`), as the signing endpoint's JSON
    /// carries it to the relay.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InvalidArgument => "InvalidArgument",
            Refusal::PermissionDenied => "PermissionDenied",
            Refusal::FailedPrecondition => "FailedPrecondition",
            Refusal::Internal => "Internal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SignError {
    pub refusal: Refusal,
    pub message: String,
}

fn refuse(refusal: Refusal, message: impl Into<String>) -> SignError {
    SignError {
        refusal,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> SignError {
    refuse(Refusal::InvalidArgument, message)
}

/// Claims that passed the checks, ready to sign.
#[derive(Debug)]
pub struct Checked<'a> {
    claims_b64: &'a str,
    /// The namespace of the service account `sub` names
    /// (`system:serviceaccount:NAMESPACE:NAME`), for scoping an API client:
    /// what a relying party trusts is `sub`. `kubernetes.io.namespace`, when
    /// present, names the same one.
    pub namespace: Option<String>,
    /// `exp - iat`, seconds.
    pub lifetime: i64,
}

/// A header and signature, both base64url as they appear in the JWT.
#[derive(Debug, Clone)]
pub struct Signed {
    pub header: String,
    pub signature: String,
    pub kid: String,
}

/// Checks a payload kube-apiserver built: base64url without padding of a
/// JSON object whose `iss` is this cluster's issuer, with integer `iat` and
/// `exp`, `exp` after `iat`, and a lifetime within the cluster's maximum.
pub fn check<'a>(cluster: &Cluster, claims_b64: &'a str) -> Result<Checked<'a>, SignError> {
    if claims_b64.is_empty() {
        return Err(invalid(
            "claims are empty: send the JWT payload, base64url-encoded",
        ));
    }
    if claims_b64.len() > MAX_CLAIMS {
        return Err(invalid(format!(
            "claims are {} bytes, more than the {MAX_CLAIMS} a token payload may be",
            claims_b64.len()
        )));
    }
    // RFC 7515 §2: base64url without padding; URL_SAFE_NO_PAD refuses
    // padding, the standard alphabet and non-canonical trailing bits.
    let json = URL_SAFE_NO_PAD.decode(claims_b64).map_err(|e| {
        invalid(format!(
            "claims are not base64url without padding (RFC 7515 §2): {e}"
        ))
    })?;
    let claims: Map<String, Value> = serde_json::from_slice(&json)
        .map_err(|e| invalid(format!("claims are not a JSON object: {e}")))?;
    let issuer = &cluster.config.issuer;
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == issuer => {}
        Some(Value::String(iss)) => {
            return Err(refuse(
                Refusal::PermissionDenied,
                format!(
                    "claims: iss {} is not this cluster's issuer {}; kube-apiserver's \
                     --service-account-issuer must be {}",
                    quote(iss),
                    quote(issuer),
                    quote(issuer)
                ),
            ))
        }
        Some(_) => return Err(invalid("claims: iss is not a string")),
        None => return Err(invalid("claims: iss is missing")),
    }
    let iat = integer(&claims, "iat")?;
    let exp = integer(&claims, "exp")?;
    if exp <= iat {
        return Err(invalid(format!("claims: exp {exp} is not after iat {iat}")));
    }
    let lifetime = exp.saturating_sub(iat);
    let max = max_lifetime_seconds(cluster);
    if lifetime > max {
        return Err(refuse(
            Refusal::PermissionDenied,
            format!(
                "claims: lifetime exp - iat = {lifetime} s is longer than this cluster's \
                 max_token_lifetime of {max} s (Metadata's max_token_expiration_seconds)"
            ),
        ));
    }
    let namespace = match claims.get("sub") {
        Some(Value::String(sub)) => sub
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .map(|(namespace, _)| namespace.to_owned()),
        Some(_) => return Err(invalid("claims: sub is not a string")),
        None => None,
    };
    let stated = claims
        .get("kubernetes.io")
        .and_then(|k| k.get("namespace"))
        .and_then(Value::as_str);
    if let (Some(of_sub), Some(stated)) = (&namespace, stated) {
        if of_sub != stated {
            return Err(invalid(format!(
                "claims: sub is a service account of namespace {} but kubernetes.io.namespace \
                 is {}",
                quote(of_sub),
                quote(stated)
            )));
        }
    }
    Ok(Checked {
        claims_b64,
        namespace,
        lifetime,
    })
}

/// A NumericDate claim (RFC 7519 §2) as kube-apiserver writes it: an integer.
fn integer(claims: &Map<String, Value>, name: &str) -> Result<i64, SignError> {
    match claims.get(name) {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid(format!("claims: {name} is not an integer: {v}"))),
        None => Err(invalid(format!("claims: {name} is missing"))),
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The longest lifetime this cluster signs: `max_token_lifetime`.
pub fn max_lifetime_seconds(cluster: &Cluster) -> i64 {
    i64::try_from(cluster.config.max_token_lifetime.as_secs()).unwrap_or(i64::MAX)
}

/// The published set a signature is made for and the key that makes it.
#[derive(Debug)]
pub struct SigningSet {
    pub published: Arc<Published>,
    pub key: Arc<SigningKey>,
}

/// What signs for `cluster` now, taken as minting takes it (`mint::mint`):
/// the current published set and its current key. A cluster that cannot
/// sign here is to be refused with FAILED_PRECONDITION and the reason.
/// Cheap: call it before waiting for a signing turn.
pub fn signing_keys(cluster: &Cluster) -> Result<SigningSet, SignError> {
    let signer = cluster
        .signer()
        .map_err(|e| refuse(Refusal::FailedPrecondition, e.to_string()))?;
    Ok(SigningSet {
        published: signer.published,
        key: signer.key,
    })
}

/// Signs `header.claims` with the current key; the header holds only alg,
/// kid and typ (REFERENCE §9).
pub fn sign(set: &SigningSet, checked: &Checked<'_>) -> Result<Signed, SignError> {
    let (published, signer) = (&set.published, &set.key);
    let mut input =
        String::with_capacity(published.header_b64.len() + 1 + checked.claims_b64.len());
    input.push_str(&published.header_b64);
    input.push('.');
    input.push_str(checked.claims_b64);
    let signature = signer
        .sign(input.as_bytes())
        .map_err(|_| refuse(Refusal::Internal, "signing failed"))?;
    Ok(Signed {
        header: published.header_b64.clone(),
        signature: URL_SAFE_NO_PAD.encode(signature),
        kid: signer.kid().to_owned(),
    })
}

/// A published key as kube-apiserver takes it: the kid and the PKIX
/// SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationKey {
    pub kid: String,
    pub der: Vec<u8>,
}

/// What `FetchKeys` answers: exactly the keys of the public JWKS.
#[derive(Debug, Clone)]
pub struct KeyData {
    pub keys: Vec<VerificationKey>,
    pub changed: SystemTime,
}

/// The keys of `published`'s JWKS, each as PKIX DER. Read from the JWKS
/// document itself, so the answer is the public JWKS key for key.
pub fn key_data(published: &Published) -> Result<KeyData, SignError> {
    let keys = jwks_to_der(&published.jwks.body)
        .map_err(|why| refuse(Refusal::Internal, format!("the published JWKS: {why}")))?;
    Ok(KeyData {
        keys,
        changed: published.changed,
    })
}

/// Every key of a JWK Set (RFC 7517 §5) as PKIX DER: RSA from `n` and `e`,
/// EC P-256 from `x` and `y`.
pub fn jwks_to_der(jwks: &[u8]) -> Result<Vec<VerificationKey>, String> {
    use p256::pkcs8::EncodePublicKey as _;
    let set: Value = serde_json::from_slice(jwks).map_err(|e| e.to_string())?;
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let member = |jwk: &Value, name: &str| -> Result<Vec<u8>, String> {
        let text = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("a key has no \"{name}\""))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| format!("\"{name}\" is not base64url: {e}"))
    };
    keys.iter()
        .map(|jwk| {
            let kid = jwk
                .get("kid")
                .and_then(Value::as_str)
                .ok_or("a key has no \"kid\"")?;
            let der = match (
                jwk.get("kty").and_then(Value::as_str),
                jwk.get("crv").and_then(Value::as_str),
            ) {
                (Some("RSA"), _) => {
                    let n = rsa::BigUint::from_bytes_be(&member(jwk, "n")?);
                    let e = rsa::BigUint::from_bytes_be(&member(jwk, "e")?);
                    rsa::RsaPublicKey::new(n, e)
                        .map_err(|e| format!("key {kid}: {e}"))?
                        .to_public_key_der()
                        .map_err(|e| format!("key {kid}: {e}"))?
                }
                (Some("EC"), Some("P-256")) => {
                    let mut point = vec![4u8];
                    point.extend(member(jwk, "x")?);
                    point.extend(member(jwk, "y")?);
                    p256::PublicKey::from_sec1_bytes(&point)
                        .map_err(|e| format!("key {kid}: {e}"))?
                        .to_public_key_der()
                        .map_err(|e| format!("key {kid}: {e}"))?
                }
                (kty, crv) => {
                    return Err(format!(
                        "key {kid}: kty {kty:?} crv {crv:?} is not RSA or EC P-256"
                    ))
                }
            };
            Ok(VerificationKey {
                kid: kid.to_owned(),
                der: der.as_bytes().to_vec(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::keys::jwk::kid_from_spki_der;
    use crate::keys::store::KeyStore;

    fn cluster(algorithm: &str) -> (Cluster, tempfile::TempDir) {
        let text = format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
             keys_dir = \"k\"\n[[clusters]]\nid = \"demo\"\nalgorithm = \"{algorithm}\"\n\
             max_token_lifetime = \"2h\"\n"
        );
        let config = Config::parse("test", &text, &Overrides::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = config.clusters[0].clone();
        let (keys, _) = KeyStore::new(dir.path().to_path_buf())
            .load_or_create("demo", c.key_spec, SystemTime::now())
            .unwrap();
        (Cluster::new(c, Arc::new(keys)), dir)
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn every_bad_payload_is_refused_with_its_reason() {
        let (c, _dir) = cluster("ES256");
        let iss = "https://oidc.example.com/c/demo";
        let padded = format!("{}=", b64(r#"{"iss":"x"}"#));
        let cases: Vec<(String, Refusal, &str)> = vec![
            (String::new(), Refusal::InvalidArgument, "claims are empty"),
            (padded, Refusal::InvalidArgument, "not base64url"),
            ("a+b/".into(), Refusal::InvalidArgument, "not base64url"),
            (b64("[1]"), Refusal::InvalidArgument, "not a JSON object"),
            (b64("{}"), Refusal::InvalidArgument, "iss is missing"),
            (
                b64(r#"{"iss":"https://other.example.com","iat":1,"exp":2}"#),
                Refusal::PermissionDenied,
                "is not this cluster's issuer",
            ),
            (
                b64(&format!(r#"{{"iss":"{iss}/","iat":1,"exp":2}}"#)),
                Refusal::PermissionDenied,
                "is not this cluster's issuer",
            ),
            (
                b64(&format!(r#"{{"iss":"{iss}","exp":2}}"#)),
                Refusal::InvalidArgument,
                "iat is missing",
            ),
            (
                b64(&format!(r#"{{"iss":"{iss}","iat":1,"exp":"2"}}"#)),
                Refusal::InvalidArgument,
                "exp is not an integer",
            ),
            (
                b64(&format!(r#"{{"iss":"{iss}","iat":100,"exp":100}}"#)),
                Refusal::InvalidArgument,
                "exp 100 is not after iat 100",
            ),
            (
                b64(&format!(r#"{{"iss":"{iss}","iat":0,"exp":7201}}"#)),
                Refusal::PermissionDenied,
                "7201 s is longer than this cluster's max_token_lifetime of 7200 s",
            ),
        ];
        for (claims, refusal, says) in cases {
            let err = check(&c, &claims).unwrap_err();
            assert_eq!(err.refusal, refusal, "{claims}: {err}");
            assert!(err.message.contains(says), "{claims}: {err}");
        }
        // The namespace is the one sub names; kubernetes.io.namespace must agree.
        let ok = b64(&format!(
            r#"{{"iss":"{iss}","iat":0,"exp":7200,"sub":"system:serviceaccount:ns:sa","kubernetes.io":{{"namespace":"ns"}}}}"#
        ));
        let checked = check(&c, &ok).unwrap();
        assert_eq!(checked.namespace.as_deref(), Some("ns"));
        assert_eq!(checked.lifetime, 7200);
        let only_claimed = b64(&format!(
            r#"{{"iss":"{iss}","iat":0,"exp":7200,"sub":"admin","kubernetes.io":{{"namespace":"ns"}}}}"#
        ));
        assert_eq!(check(&c, &only_claimed).unwrap().namespace, None);
        let disagree = b64(&format!(
            r#"{{"iss":"{iss}","iat":0,"exp":7200,"sub":"system:serviceaccount:prod:sa","kubernetes.io":{{"namespace":"ns"}}}}"#
        ));
        let err = check(&c, &disagree).unwrap_err();
        assert_eq!(err.refusal, Refusal::InvalidArgument);
        assert!(err.message.contains("namespace \"prod\""), "{err}");
    }

    #[test]
    fn the_signature_covers_the_claims_as_given_and_verifies_with_the_jwks_key() {
        for alg in ["ES256", "RS256"] {
            let (c, _dir) = cluster(alg);
            // Unsorted members and odd spacing: signed as is, not re-encoded.
            let claims =
                b64(r#"{"sub":"s", "iss":"https://oidc.example.com/c/demo","iat":5,"exp":605}"#);
            let set = signing_keys(&c).unwrap();
            let signed = sign(&set, &check(&c, &claims).unwrap()).unwrap();
            let header: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&signed.header).unwrap()).unwrap();
            let members: Vec<&String> = header.as_object().unwrap().keys().collect();
            assert_eq!(members, ["alg", "kid", "typ"]);
            assert_eq!(header["alg"], alg);
            assert_eq!(header["typ"], "JWT");
            let data = key_data(&set.published).unwrap();
            // The signing key and the standby published beside it.
            assert_eq!(data.keys.len(), 2);
            let key = data.keys.iter().find(|k| k.kid == signed.kid).unwrap();
            assert_eq!(kid_from_spki_der(&key.der), signed.kid);
            let message = format!("{}.{claims}", signed.header);
            let signature = URL_SAFE_NO_PAD.decode(&signed.signature).unwrap();
            assert!(set.key.verify(message.as_bytes(), &signature));
        }
    }
}
