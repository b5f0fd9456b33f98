//! What the fuzz targets share: an in-memory cluster to mint and review with,
//! and the checks of what the library promises once a TokenRequest decodes.
//!
//! The checks follow the code's own documentation (src/issuer/mint.rs and
//! src/issuer/review.rs): a request the decoder accepts either mints or is
//! refused with the path of a `spec` field, a minted token's lifetime is the
//! requested one (default 3600 s) cut to the cluster's maximum, and the
//! cluster's own TokenReview accepts the token it just minted.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use workload_issuer::config::{Config, Overrides};
use workload_issuer::http::token_request::Decoded;
use workload_issuer::issuer::claims::subject;
use workload_issuer::issuer::mint::{
    mint, unix_seconds, BoundObjectRef, MintError, MintRequest, DEFAULT_EXPIRATION_SECONDS,
    MAX_AUDIENCES,
};
use workload_issuer::issuer::review::{review, Review};
use workload_issuer::issuer::Cluster;
use workload_issuer::k8s::names::check_audience;
use workload_issuer::keys::material::{KeySpec, SigningKey};
use workload_issuer::keys::store::{rfc3339, KeyRecord, KeySet, KeyState, StoredKey};

/// The namespace and service account every fuzzed request is minted for (in
/// the server they come from the URL, not the body).
pub const NAMESPACE: &str = "ns";
pub const NAME: &str = "sa";

/// A fixed clock, so a run is reproducible: 2033-05-18T03:33:20Z.
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
}

/// One ES256 cluster with a fresh in-memory key (no files are written), built
/// once per fuzzing process. ES256, not RS256: it signs in microseconds.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let text = r#"
listen = "127.0.0.1:0"
public_url = "https://oidc.example.com"
keys_dir = "unused"
[[clusters]]
id = "fuzz"
algorithm = "ES256"
audiences = ["sts.amazonaws.com"]
min_token_lifetime = "10m"
max_token_lifetime = "24h"
"#;
        let config = Config::parse("fuzz cluster", text, &Overrides::default())
            .unwrap_or_else(|e| panic!("the fuzz harness's own configuration: {e}"));
        let (key, _pem) = SigningKey::generate(KeySpec::P256).expect("generate a P-256 key");
        let stamp = rfc3339(now());
        let record = KeyRecord {
            kid: key.kid().to_owned(),
            alg: key.algorithm().as_str().to_owned(),
            bits: key.bits(),
            state: KeyState::Current,
            created: stamp.clone(),
            published: stamp.clone(),
            activated: Some(stamp),
            retired: None,
            imported: false,
        };
        let keys = KeySet::new(vec![StoredKey::new(record, Arc::new(key))])
            .expect("a key set of one current key");
        Cluster::new(config.clusters[0].clone(), Arc::new(keys))
    })
}

/// Checks a decoded TokenRequest end to end: into a MintRequest, minted by
/// the fuzz cluster, and the token reviewed by the same cluster.
pub fn check_decoded(decoded: Decoded) {
    let audiences = decoded.audiences.clone();
    let expiration_seconds = decoded.expiration_seconds;
    let bound = decoded.bound.clone();
    let request = decoded.into_request(NAMESPACE, NAME);
    // into_request adds the URL's names and carries the body over untouched.
    assert_eq!(
        request,
        MintRequest {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
            audiences,
            expiration_seconds,
            bound,
        }
    );
    check_mint(&request);
}

fn check_mint(request: &MintRequest) {
    let cluster = cluster();
    let cfg = &cluster.config;
    let min = cfg.min_token_lifetime.as_secs() as i64;
    let max = cfg.max_token_lifetime.as_secs() as i64;
    let requested = request
        .expiration_seconds
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    let minted = match mint(cluster, request, now()) {
        Ok(m) => m,
        Err(MintError::Invalid { field, detail }) => {
            // The names come from the harness and are valid, so the fault is
            // in the body, and the error names its field.
            assert!(
                field.starts_with("spec."),
                "refused on {field:?} ({detail}) for {request:?}"
            );
            assert!(!detail.is_empty(), "an empty detail for {field}");
            return;
        }
        Err(MintError::Signing) => panic!("signing failed for {request:?}"),
        Err(MintError::CannotSign(why)) => panic!("the fuzz cluster signs: {why}"),
    };

    // Lifetime: the requested one (default 3600 s), refused below the minimum
    // and cut to the maximum with a warning.
    assert!(
        requested >= min,
        "minted although {requested} s < the minimum {min} s"
    );
    assert_eq!(minted.expiration_seconds, requested.min(max));
    assert_eq!(minted.warning.is_some(), requested > max);
    let claims = &minted.claims;
    assert_eq!(claims.iat, unix_seconds(now()));
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(claims.exp - claims.iat, minted.expiration_seconds);
    assert_eq!(unix_seconds(minted.expires_at), claims.exp);

    // Audiences: the request's, each valid, or the cluster's by default.
    if request.audiences.is_empty() {
        assert_eq!(claims.aud, cfg.audiences);
    } else {
        assert_eq!(claims.aud, request.audiences);
        assert!(claims.aud.len() <= MAX_AUDIENCES);
        for aud in &claims.aud {
            assert!(check_audience(aud).is_ok(), "minted with audience {aud:?}");
        }
    }

    // Identity and binding.
    assert_eq!(claims.iss, cfg.issuer);
    assert_eq!(claims.sub, subject(NAMESPACE, NAME));
    assert_eq!(claims.kubernetes.namespace, NAMESPACE);
    assert_eq!(claims.kubernetes.serviceaccount.name, NAME);
    let k = &claims.kubernetes;
    let slots = [("Pod", &k.pod), ("Secret", &k.secret), ("Node", &k.node)];
    match &request.bound {
        None => assert!(slots.iter().all(|(_, s)| s.is_none()), "{k:?}"),
        Some(BoundObjectRef {
            kind, name, uid, ..
        }) => {
            for (slot_kind, slot) in slots {
                if slot_kind == kind {
                    let o = slot.as_ref().expect("the bound object's claim");
                    assert_eq!((&o.name, &o.uid), (name, uid));
                } else {
                    assert!(slot.is_none(), "a {slot_kind} claim for a {kind}");
                }
            }
        }
    }

    // A token is three base64url parts, and the cluster's TokenReview accepts
    // it for the audiences it was minted for.
    assert_eq!(minted.token.split('.').count(), 3, "{}", minted.token);
    assert_eq!(minted.kid, cluster.published().keys.current().kid());
    let r = review(cluster, &minted.token, &claims.aud, now());
    check_review_shape(&r);
    assert!(r.authenticated, "the minted token was refused: {r:?}");
    assert_eq!(r.audiences, claims.aud);
    let user = r.user.expect("authenticated means a user");
    assert_eq!(user.username, claims.sub);
    assert_eq!(user.uid, claims.kubernetes.serviceaccount.uid);
}

/// What every review answer looks like, accepted or not.
pub fn check_review_shape(r: &Review) {
    if r.authenticated {
        assert!(r.user.is_some() && r.error.is_none(), "{r:?}");
        assert!(!r.audiences.is_empty(), "accepted for no audience: {r:?}");
    } else {
        assert!(r.user.is_none() && r.audiences.is_empty(), "{r:?}");
        assert!(r.error.as_deref().is_some_and(|e| !e.is_empty()), "{r:?}");
    }
}

/// Reviews a token the fuzzer made up against the fuzz cluster. It cannot be
/// signed by the cluster's fresh key, so it is refused, but only after the
/// parsing the review does; nothing may panic on the way.
pub fn check_foreign_token(token: &str, audiences: &[String]) {
    let r = review(cluster(), token, audiences, now());
    check_review_shape(&r);
    assert!(!r.authenticated, "a made-up token was accepted: {token:?}");
}
