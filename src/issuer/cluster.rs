//! A cluster at run time: its settings and the documents it publishes, swapped
//! whole when its key set changes; and the registry that finds a cluster by
//! the path of its issuer URL in O(1), however many clusters there are.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;

use super::discovery;
use crate::config::ClusterConfig;
use crate::keys::store::KeySet;

/// A published document with its strong entity tag (RFC 9110 §8.8.3) and
/// its Cache-Control value. All three are slices of one buffer, so serving a
/// document touches one allocation and one reference count: with thousands
/// of clusters requested at random, that is what stays in cache.
#[derive(Clone, Debug)]
pub struct Document {
    pub body: Bytes,
    /// Quoted, ready for the ETag header.
    pub etag: Bytes,
    /// `public, max-age=N`.
    pub cache_control: Bytes,
}

impl Document {
    fn new(body: Vec<u8>, max_age: Duration) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        // 128 bits of the digest are plenty to tell versions apart.
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
        let cache_control = format!("public, max-age={}", max_age.as_secs());
        let (b, e) = (body.len(), etag.len());
        let mut all = body;
        all.extend_from_slice(etag.as_bytes());
        all.extend_from_slice(cache_control.as_bytes());
        let all = Bytes::from(all);
        Document {
            body: all.slice(..b),
            etag: all.slice(b..b + e),
            cache_control: all.slice(b + e..),
        }
    }
}

/// Everything derived from one key set: built once per change.
#[derive(Debug)]
pub struct Published {
    pub keys: Arc<KeySet>,
    pub discovery: Document,
    pub jwks: Document,
    /// base64url of the JOSE header of tokens signed by the current key.
    pub header_b64: String,
}

impl Published {
    pub fn new(issuer: &str, max_age: Duration, keys: Arc<KeySet>) -> Self {
        let signer = keys.signer();
        // RFC 7515 §4.1; members sorted as Kubernetes emits them.
        let header = format!(
            r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#,
            signer.algorithm(),
            signer.kid()
        );
        Published {
            discovery: Document::new(discovery::document(issuer, keys.algorithms()), max_age),
            jwks: Document::new(keys.jwks_json().to_vec(), max_age),
            header_b64: URL_SAFE_NO_PAD.encode(header),
            keys,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    published: ArcSwap<Published>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, keys: Arc<KeySet>) -> Self {
        let published = Published::new(&config.issuer, config.jwks_max_age, keys);
        Cluster {
            config,
            published: ArcSwap::from_pointee(published),
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// The current documents and signer; cheap, lock-free.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// The current documents for the duration of one synchronous answer,
    /// without touching the shared reference count.
    pub fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.published.load()
    }

    /// Whether signing takes long enough (RSA: hundreds of microseconds) to
    /// wait for a turn between other requests (see `crate::signing`).
    pub fn signs_slowly(&self) -> bool {
        self.published.load().keys.signer().algorithm() == crate::keys::material::Algorithm::Rs256
    }

    /// Replaces the key set; readers see the old or the new set, never a mix.
    pub fn replace_keys(&self, keys: Arc<KeySet>) {
        self.published.store(Arc::new(Published::new(
            &self.config.issuer,
            self.config.jwks_max_age,
            keys,
        )));
    }
}

/// All clusters, found by id or by issuer path.
#[derive(Debug, Default)]
pub struct Issuers {
    clusters: Vec<Arc<Cluster>>,
    /// Straight to the cluster: one probe, no index hop.
    by_path: HashMap<Box<str>, Arc<Cluster>>,
    by_id: HashMap<String, usize>,
}

impl Issuers {
    pub fn new(clusters: Vec<Arc<Cluster>>) -> Self {
        let by_path = clusters
            .iter()
            .map(|c| (c.config.issuer_path.clone().into_boxed_str(), c.clone()))
            .collect();
        let by_id = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.config.id.clone(), i))
            .collect();
        Issuers {
            clusters,
            by_path,
            by_id,
        }
    }

    /// The cluster whose issuer URL has this path ("" for the root).
    pub fn by_path(&self, path: &str) -> Option<&Arc<Cluster>> {
        self.by_path.get(path)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Cluster>> {
        self.by_id.get(id).map(|i| &self.clusters[*i])
    }

    pub fn all(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
}
