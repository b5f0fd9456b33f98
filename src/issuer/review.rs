//! TokenReview: is this token one of ours, and whose? Answers as
//! kube-apiserver's service-account authenticator does
//! (pkg/serviceaccount/claims.go, Validate), so existing client-go code can
//! validate tokens against this issuer.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

use super::claims::Claims;
use super::cluster::Cluster;

/// Clock skew tolerated on exp and nbf.
const LEEWAY: i64 = 30;

/// The user a valid token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// As kube-apiserver puts them: pod and node names and uids, and the
    /// credential id (`JTI=<jti>`).
    pub extra: Vec<(String, Vec<String>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    pub authenticated: bool,
    pub user: Option<ReviewedUser>,
    /// The requested audiences the token is valid for.
    pub audiences: Vec<String>,
    pub error: Option<String>,
}

impl Review {
    fn refused(error: impl Into<String>) -> Review {
        Review {
            authenticated: false,
            user: None,
            audiences: Vec::new(),
            error: Some(error.into()),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// Reviews `token` for `cluster`. `audiences` are the audiences the caller
/// wants the token for; empty means the cluster's default audiences.
pub fn review(cluster: &Cluster, token: &str, audiences: &[String], now: SystemTime) -> Review {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Review::refused("not a JWT: it must have three dot-separated parts");
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let (Some(header), Some(payload), Some(signature)) = (decode(h), decode(p), decode(s)) else {
        return Review::refused("not a JWT: a part is not base64url");
    };
    let Ok(header) = serde_json::from_slice::<Header>(&header) else {
        return Review::refused("not a JWT: the header is not valid JSON");
    };
    let published = cluster.published();
    let Some(kid) = header.kid else {
        return Review::refused("the token has no kid");
    };
    let Some(key) = published.keys.find(&kid) else {
        return Review::refused(format!(
            "the token's key {kid} is not one of this issuer's published keys"
        ));
    };
    if header.alg != key.algorithm().as_str() {
        return Review::refused(format!(
            "the token's algorithm {} does not match key {kid}",
            header.alg
        ));
    }
    let signed = &token[..h.len() + 1 + p.len()];
    if !key.verify(signed.as_bytes(), &signature) {
        return Review::refused("invalid signature");
    }
    let Ok(claims) = serde_json::from_slice::<Claims>(&payload) else {
        return Review::refused("the token's claims are not those of a service-account token");
    };
    if claims.iss != cluster.config.issuer {
        return Review::refused(format!(
            "the token's issuer {:?} is not {:?}",
            claims.iss, cluster.config.issuer
        ));
    }
    let now_s = super::mint::unix_seconds(now);
    if claims.exp.saturating_add(LEEWAY) <= now_s {
        return Review::refused("the token has expired");
    }
    if claims.nbf.saturating_sub(LEEWAY) > now_s {
        return Review::refused("the token is not valid yet");
    }
    let wanted: &[String] = if audiences.is_empty() {
        &cluster.config.audiences
    } else {
        audiences
    };
    let matched: Vec<String> = wanted
        .iter()
        .filter(|a| claims.aud.contains(a))
        .cloned()
        .collect();
    if matched.is_empty() {
        return Review::refused(format!(
            "token audiences {:?} is invalid for the target audiences {:?}",
            claims.aud, wanted
        ));
    }
    let k = &claims.kubernetes;
    let ns = &k.namespace;
    let mut extra = Vec::new();
    if let Some(pod) = &k.pod {
        extra.push((
            "authentication.kubernetes.io/pod-name".to_owned(),
            vec![pod.name.clone()],
        ));
        extra.push((
            "authentication.kubernetes.io/pod-uid".to_owned(),
            vec![pod.uid.clone()],
        ));
    }
    if let Some(node) = &k.node {
        extra.push((
            "authentication.kubernetes.io/node-name".to_owned(),
            vec![node.name.clone()],
        ));
        extra.push((
            "authentication.kubernetes.io/node-uid".to_owned(),
            vec![node.uid.clone()],
        ));
    }
    extra.push((
        "authentication.kubernetes.io/credential-id".to_owned(),
        vec![format!("JTI={}", claims.jti)],
    ));
    Review {
        authenticated: true,
        user: Some(ReviewedUser {
            username: claims.sub.clone(),
            uid: k.serviceaccount.uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            extra,
        }),
        audiences: matched,
        error: None,
    }
}
