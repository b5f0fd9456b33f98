//! A cluster at run time: its settings and the documents it publishes, swapped
//! whole when its key set changes; and the registry that finds a cluster by
//! the path of its issuer URL in O(1), however many clusters there are.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};

use super::discovery;
use crate::config::ClusterConfig;
use crate::keys::material::SigningKey;
use crate::keys::store::KeySet;

/// Length of an entity tag: 128 bits of SHA-256 in base64url, quoted.
const ETAG_LEN: usize = 24;

/// A published document and its strong entity tag (RFC 9110 §8.8.3).
#[derive(Debug)]
pub struct Document {
    pub body: Box<[u8]>,
    /// Quoted, ready for the ETag header; held inline, so a conditional GET
    /// reads no memory beyond the published set itself.
    etag: [u8; ETAG_LEN],
}

impl Document {
    fn new(body: Vec<u8>) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let mut etag = [b'"'; ETAG_LEN];
        // 128 bits of the digest are plenty to tell versions apart.
        let written = URL_SAFE_NO_PAD.encode_slice(&digest.as_ref()[..16], &mut etag[1..]);
        debug_assert_eq!(written, Ok(ETAG_LEN - 2));
        Document {
            body: body.into_boxed_slice(),
            etag,
        }
    }

    pub fn etag(&self) -> &[u8] {
        &self.etag
    }
}

/// The published set a token is signed for, and the key that signs it.
#[derive(Debug)]
pub struct Signer {
    pub published: Arc<Published>,
    pub key: Arc<SigningKey>,
}

/// Why a cluster's tokens cannot be signed here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CannotSign {
    #[error(
        "cluster {cluster:?} is publish_only: it publishes imported public keys and cannot \
         sign; its own kube-apiserver signs its tokens"
    )]
    PublishOnly { cluster: String },
    #[error(
        "cluster {cluster:?} cannot sign: its current key {kid} was imported without its \
         private key (the cluster was publish_only); `keys rotate --cluster {cluster}` brings \
         in a key generated here"
    )]
    Imported { cluster: String, kid: String },
}

/// Which of a cluster's two documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Discovery,
    Jwks,
}

/// Everything derived from one key set: built once per change.
#[derive(Debug)]
pub struct Published {
    pub jwks: Document,
    pub discovery: Document,
    /// Seconds for Cache-Control's max-age.
    pub max_age: u64,
    pub keys: Arc<KeySet>,
    /// base64url of the JOSE header of tokens signed by the current key.
    pub header_b64: String,
    /// When the published keys last changed, as far as this server knows:
    /// the newest time in their records at start, then the time a reload
    /// brought a different JWKS (a revoked key leaves no record behind).
    pub changed: SystemTime,
}

impl Published {
    pub fn new(issuer: &str, max_age: Duration, keys: Arc<KeySet>) -> Self {
        let signer = keys.current();
        // RFC 7515 §4.1; members sorted as Kubernetes emits them.
        let header = format!(
            r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#,
            signer.algorithm(),
            signer.kid()
        );
        Published {
            discovery: Document::new(discovery::document(issuer, keys.algorithms())),
            jwks: Document::new(keys.jwks_json()),
            max_age: max_age.as_secs(),
            header_b64: URL_SAFE_NO_PAD.encode(header),
            changed: newest_record_time(&keys),
            keys,
        }
    }

    pub fn document(&self, which: Which) -> &Document {
        match which {
            Which::Discovery => &self.discovery,
            Which::Jwks => &self.jwks,
        }
    }

    /// A document's bytes for a response body, without copying them: the
    /// body holds this published set until it is sent.
    pub fn body(self: &Arc<Self>, which: Which) -> Bytes {
        Bytes::from_owner(Body {
            published: self.clone(),
            which,
        })
    }
}

/// The newest publication, activation or retirement time of the keys.
fn newest_record_time(keys: &KeySet) -> SystemTime {
    keys.keys()
        .iter()
        .flat_map(|k| {
            let r = &k.record;
            [Some(&r.published), r.activated.as_ref(), r.retired.as_ref()]
        })
        .flatten()
        .filter_map(|t| humantime::parse_rfc3339(t).ok())
        .max()
        .unwrap_or(UNIX_EPOCH)
}

struct Body {
    published: Arc<Published>,
    which: Which,
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.published.document(self.which).body
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub config: ClusterConfig,
    published: ArcSwap<Published>,
}

impl Cluster {
    /// A cluster with its settings and the key set it starts with.
    pub fn new(config: ClusterConfig, keys: Arc<KeySet>) -> Self {
        let published = Published::new(&config.issuer, config.jwks_max_age, keys);
        Cluster {
            config,
            published: ArcSwap::from_pointee(published),
        }
    }

    /// The same cluster with other settings (a reloaded config), keeping
    /// what it publishes now.
    pub fn with_config(&self, config: ClusterConfig) -> Self {
        let now = self.published();
        let mut published = Published::new(&config.issuer, config.jwks_max_age, now.keys.clone());
        if published.jwks.body == now.jwks.body {
            published.changed = now.changed;
        }
        Cluster {
            config,
            published: ArcSwap::from_pointee(published),
        }
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// What the cluster publishes now; a later key change does not alter
    /// what this returns.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    fn current(&self) -> arc_swap::Guard<Arc<Published>> {
        self.published.load()
    }

    /// Whether signing for this cluster is slow (RSA): such signatures take
    /// a turn, so they cannot starve document serving.
    pub fn signs_slowly(&self) -> bool {
        self.current().keys.current().algorithm() == crate::keys::material::Algorithm::Rs256
    }

    /// The key that signs for this cluster now, with the set it belongs to;
    /// refused for a cluster whose kube-apiserver signs its own tokens. The
    /// one place a signing key is handed out.
    pub fn signer(&self) -> Result<Signer, CannotSign> {
        if self.config.publish_only {
            return Err(CannotSign::PublishOnly {
                cluster: self.config.id.clone(),
            });
        }
        let published = self.published();
        match published.keys.signer() {
            Some(key) => Ok(Signer {
                key: key.clone(),
                published,
            }),
            None => Err(CannotSign::Imported {
                cluster: self.config.id.clone(),
                kid: published.keys.current().kid().to_owned(),
            }),
        }
    }

    /// Publishes a new key set; `now` stamps the change when the JWKS
    /// differs from the one served.
    pub fn replace_keys(&self, keys: Arc<KeySet>, now: SystemTime) {
        let mut published = Published::new(&self.config.issuer, self.config.jwks_max_age, keys);
        let before = self.current();
        published.changed = if before.jwks.body == published.jwks.body {
            before.changed
        } else {
            now.max(published.changed)
        };
        self.published.store(Arc::new(published));
    }
}

/// Every cluster, found by id or by the path of its issuer URL in one hash
/// probe. Built whole and swapped whole when clusters come or go; a cluster
/// itself lives on from one set to the next (its key set with it).
#[derive(Debug, Default)]
pub struct Issuers {
    clusters: Vec<Arc<Cluster>>,
    by_path: HashTable<PathEntry>,
    hasher: DefaultHashBuilder,
    paths: String,
    by_id: HashMap<String, usize>,
}

impl Issuers {
    /// Clusters with their first key sets.
    pub fn new(clusters: Vec<(ClusterConfig, Arc<KeySet>)>) -> Self {
        Issuers::of(
            clusters
                .into_iter()
                .map(|(config, keys)| Arc::new(Cluster::new(config, keys)))
                .collect(),
        )
    }

    /// The set of these clusters. Ids and issuer paths must be unique (the
    /// configuration and the cluster registry see to it); a later duplicate
    /// is left out.
    pub fn of(clusters: Vec<Arc<Cluster>>) -> Self {
        let mut paths = String::new();
        let hasher = DefaultHashBuilder::default();
        let mut by_path = HashTable::with_capacity(clusters.len());
        let mut by_id = HashMap::with_capacity(clusters.len());
        let mut kept = Vec::with_capacity(clusters.len());
        for c in clusters {
            let path = c.config.issuer_path.as_str();
            let hash = hasher.hash_one(path);
            let taken = by_path
                .find(hash, |e: &PathEntry| {
                    paths.get(e.start..e.end) == Some(path)
                })
                .is_some();
            if taken || by_id.contains_key(&c.config.id) {
                tracing::error!(
                    cluster = c.id(),
                    issuer = c.config.issuer,
                    "left out: its id or issuer path is another cluster's"
                );
                continue;
            }
            let start = paths.len();
            paths.push_str(path);
            let entry = PathEntry {
                start,
                end: paths.len(),
                index: kept.len(),
            };
            by_path.insert_unique(hash, entry, |e| {
                hasher.hash_one(paths.get(e.start..e.end).unwrap_or_default())
            });
            by_id.insert(c.config.id.clone(), kept.len());
            kept.push(c);
        }
        kept.shrink_to_fit();
        Issuers {
            clusters: kept,
            by_path,
            hasher,
            paths,
            by_id,
        }
    }

    fn index_of(&self, path: &str) -> Option<usize> {
        self.by_path
            .find(self.hasher.hash_one(path), |e| {
                self.paths.get(e.start..e.end) == Some(path)
            })
            .map(|e| e.index)
    }

    /// The cluster whose issuer URL has this path ("" for the root).
    pub fn by_path(&self, path: &str) -> Option<&Arc<Cluster>> {
        self.index_of(path).map(|i| &self.clusters[i])
    }

    /// What the cluster at this issuer path publishes now.
    pub fn published_at(&self, path: &str) -> Option<Arc<Published>> {
        self.index_of(path).map(|i| self.clusters[i].published())
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Cluster>> {
        self.by_id.get(id).map(|i| &self.clusters[*i])
    }

    pub fn all(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
}

impl crate::keys::registry::Known for Issuers {
    fn by_id(&self, id: &str) -> Option<&ClusterConfig> {
        Issuers::by_id(self, id).map(|c| &c.config)
    }

    fn by_issuer_path(&self, path: &str) -> Option<&str> {
        self.by_path(path).map(|c| c.id())
    }
}

/// The clusters being served now: read on every request, replaced whole when
/// clusters are created, changed or removed.
pub type LiveIssuers = ArcSwap<Issuers>;

#[derive(Debug)]
struct PathEntry {
    start: usize,
    end: usize,
    index: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::keys::store::KeyStore;
    use std::time::SystemTime;

    /// Clusters c0..c{n-1} under the default /c/<id> paths, one at /id/x and
    /// one at the root of its host, all sharing one key set.
    fn issuers(n: usize) -> Issuers {
        let mut text = String::from(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\nkeys_dir = \"k\"\n",
        );
        for i in 0..n {
            text.push_str(&format!(
                "[[clusters]]\nid = \"c{i}\"\nalgorithm = \"ES256\"\n"
            ));
        }
        text.push_str("[[clusters]]\nid = \"x\"\nissuer = \"https://oidc.example.com/id/x\"\n");
        text.push_str("[[clusters]]\nid = \"root\"\nissuer = \"https://root.example.com\"\n");
        let config = Config::parse("test", &text, &Overrides::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        let (keys, _) = store
            .load_or_create("c0", config.clusters[0].key_spec, SystemTime::now())
            .unwrap();
        let keys = Arc::new(keys);
        Issuers::new(
            config
                .clusters
                .into_iter()
                .map(|c| (c, keys.clone()))
                .collect(),
        )
    }

    #[test]
    fn every_issuer_path_finds_its_own_cluster_and_nothing_else_matches() {
        let issuers = issuers(3000);
        for i in 0..3000 {
            let path = format!("/c/c{i}");
            assert_eq!(issuers.by_path(&path).unwrap().id(), format!("c{i}"));
            assert!(issuers.published_at(&path).is_some());
        }
        assert_eq!(issuers.by_path("/id/x").unwrap().id(), "x");
        assert_eq!(issuers.by_path("").unwrap().id(), "root");
        for path in [
            "/c/c3000", "/c/c1/", "/c/c", "/c", "/", "/id/x/", "/C/c1", "c/c1",
        ] {
            assert!(issuers.by_path(path).is_none(), "{path:?} matched");
            assert!(issuers.published_at(path).is_none(), "{path:?} matched");
        }
        assert_eq!(
            issuers.by_id("c2999").unwrap().config.issuer_path,
            "/c/c2999"
        );
    }

    #[test]
    fn a_new_key_set_is_what_the_path_lookup_serves() {
        let issuers = issuers(2);
        let cluster = issuers.by_path("/c/c1").unwrap();
        let before = issuers.published_at("/c/c1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (other, _) = KeyStore::new(dir.path().to_path_buf())
            .load_or_create("c1", cluster.config.key_spec, SystemTime::now())
            .unwrap();
        cluster.replace_keys(Arc::new(other), SystemTime::now());
        let after = issuers.published_at("/c/c1").unwrap();
        assert_ne!(before.jwks.etag(), after.jwks.etag());
        assert_eq!(after.jwks.body, cluster.published().jwks.body);
        // The other cluster's documents did not move.
        let c0 = issuers.published_at("/c/c0").unwrap();
        assert_eq!(c0.jwks.etag(), before.jwks.etag());
        // A body handed out keeps the set it came from alive and unchanged.
        let body = before.body(Which::Jwks);
        drop(before);
        assert_eq!(&body[..], &c0.jwks.body[..]);
    }

    #[test]
    fn a_cluster_that_signs_its_own_tokens_is_refused_every_signer() {
        use crate::issuer::mint::{mint, MintError, MintRequest};
        use crate::keys::manual::import;
        use crate::keys::material::{KeySpec, SigningKey};
        let text = "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
                    keys_dir = \"k\"\n[[clusters]]\nid = \"own\"\npublish_only = true\n";
        let mut config = Config::parse("test", text, &Overrides::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().to_path_buf());
        let (key, _) = SigningKey::generate(KeySpec::P256).unwrap();
        let c = config.clusters.remove(0);
        import(
            &store,
            "own",
            key.public(),
            None,
            &c.rotation,
            SystemTime::now(),
            false,
        )
        .unwrap();
        let keys = Arc::new(store.load("own", None).unwrap().unwrap());
        let request = MintRequest {
            namespace: "ns".into(),
            name: "sa".into(),
            ..MintRequest::default()
        };

        let cluster = Cluster::new(c.clone(), keys.clone());
        let err = cluster.signer().unwrap_err();
        assert_eq!(
            err.to_string(),
            "cluster \"own\" is publish_only: it publishes imported public keys and cannot \
             sign; its own kube-apiserver signs its tokens"
        );
        assert_eq!(
            mint(&cluster, &request, SystemTime::now()).unwrap_err(),
            MintError::CannotSign(err)
        );
        // Its documents are served all the same, with the imported key.
        let jwks: serde_json::Value =
            serde_json::from_slice(&cluster.published().jwks.body).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], key.kid());

        // Once no longer publish_only, a current key imported without its
        // private half still signs nothing.
        let cluster = Cluster::new(
            ClusterConfig {
                publish_only: false,
                ..c
            },
            keys,
        );
        let err = cluster.signer().unwrap_err().to_string();
        assert!(
            err.contains(&format!("its current key {} was imported", key.kid())),
            "{err}"
        );
    }
}
