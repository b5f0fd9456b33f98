//! API clients: who may mint, for which clusters and namespaces.
//!
//! Bearer tokens are held only as SHA-256 digests; a presented token is hashed
//! and compared with every client's digest in constant time, so neither the
//! comparison nor which client matched shows in the timing.
//!
//! Uses `keys::store` only for the keys dir's lock, under which a generated
//! token file is created, as replicas sharing the dir may start together.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use std::sync::Arc;

use crate::config::{ApiClientConfig, Credential, RateLimit};
use crate::fsutil::write_atomic;
use crate::keys::store::KeyStore;

#[derive(Debug)]
pub struct ApiClient {
    pub name: String,
    /// SHA-256 of the bearer token; `None` for a client that only
    /// authenticates with a certificate.
    digest: Option<[u8; 32]>,
    certificate_names: Vec<String>,
    /// Whether a certificate without SANs may name this client by its CN.
    allow_common_name: bool,
    clusters: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
    limiter: Option<Limiter>,
    /// May create, recreate and delete clusters (the admin API).
    pub admin: bool,
}

/// A token bucket of mints.
#[derive(Debug)]
struct Limiter {
    limit: RateLimit,
    /// Mints available and when that was computed.
    bucket: Mutex<(f64, Instant)>,
}

impl Limiter {
    fn new(limit: RateLimit) -> Self {
        Limiter {
            limit,
            bucket: Mutex::new((f64::from(limit.burst), Instant::now())),
        }
    }

    fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut guard = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let (available, at) = &mut *guard;
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *available =
            (*available + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        *at = now.max(*at);
        if *available >= 1.0 {
            *available -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - *available) / self.limit.per_second,
            ))
        }
    }
}

#[derive(Debug, Default)]
pub struct ApiClients {
    clients: Vec<Arc<ApiClient>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("API client \"{client}\": token file {path}: {source}")]
    Io {
        client: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "API client \"{client}\": cannot lock the keys dir to create its token file {path}: {source}"
    )]
    Lock {
        client: String,
        path: PathBuf,
        source: Box<crate::keys::store::StoreError>,
    },
    #[error("API client \"{client}\": token file {path} is empty")]
    Empty { client: String, path: PathBuf },
    #[error(
        "API clients \"{first}\" and \"{second}\" hold the same bearer token; a token must \
         identify one client, give each its own"
    )]
    SharedToken { first: String, second: String },
}

/// A token file that was created at start, to tell the operator where it is.
#[derive(Debug)]
pub struct TokenFile {
    pub client: String,
    pub path: PathBuf,
    pub generated: bool,
}

/// Why a client may not mint here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("API client \"{client}\" may not mint tokens {scope}")]
pub struct Forbidden {
    pub client: String,
    pub scope: String,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// 256 random bits, base64url.
fn new_token() -> Result<String, io::Error> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl ApiClients {
    /// Builds the clients, reading token files (relative paths are inside
    /// `keys_dir`) and creating the ones marked `generate` that do not exist.
    pub fn load(
        configs: &[ApiClientConfig],
        keys_dir: &Path,
    ) -> Result<(ApiClients, Vec<TokenFile>), AuthConfigError> {
        let mut clients = Vec::with_capacity(configs.len());
        let mut files = Vec::new();
        for c in configs {
            let digest = match &c.credential {
                None => None,
                Some(Credential::Sha256(d)) => Some(*d),
                Some(Credential::File { path, generate }) => {
                    let path = keys_dir.join(path);
                    let io_err = |source| AuthConfigError::Io {
                        client: c.name.clone(),
                        path: path.clone(),
                        source,
                    };
                    let mut generated = false;
                    if *generate && !path.try_exists().map_err(io_err)? {
                        // Replicas sharing the keys dir may start together:
                        // one creates the token, under the dir's lock, and
                        // every one reads what is in the file after. Without
                        // the lock each wrote its own and all but the last
                        // held a token the file no longer had.
                        let lock = KeyStore::new(keys_dir).lock().map_err(|source| {
                            AuthConfigError::Lock {
                                client: c.name.clone(),
                                path: path.clone(),
                                source: Box::new(source),
                            }
                        })?;
                        if !path.try_exists().map_err(io_err)? {
                            let token = new_token().map_err(io_err)?;
                            if let Some(dir) = path.parent() {
                                crate::fsutil::ensure_dir(dir, 0o700).map_err(io_err)?;
                            }
                            write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
                                .map_err(io_err)?;
                            generated = true;
                        }
                        drop(lock);
                    }
                    warn_if_exposed(&c.name, &path);
                    let text = fs::read_to_string(&path).map_err(io_err)?;
                    let token = text.trim();
                    if token.is_empty() {
                        return Err(AuthConfigError::Empty {
                            client: c.name.clone(),
                            path,
                        });
                    }
                    files.push(TokenFile {
                        client: c.name.clone(),
                        path: path.clone(),
                        generated,
                    });
                    Some(sha256(token.as_bytes()))
                }
            };
            // The configuration refuses one digest or one path twice; two
            // files holding the same token (or a file holding a token also
            // given as a digest) are only seen here.
            if let Some(d) = &digest {
                if let Some(first) = clients
                    .iter()
                    .find(|k: &&Arc<ApiClient>| k.digest == Some(*d))
                {
                    return Err(AuthConfigError::SharedToken {
                        first: first.name.clone(),
                        second: c.name.clone(),
                    });
                }
            }
            clients.push(Arc::new(ApiClient {
                name: c.name.clone(),
                digest,
                certificate_names: c.certificate_names.clone(),
                allow_common_name: c.allow_common_name,
                clusters: c.clusters.clone(),
                namespaces: c.namespaces.clone(),
                limiter: c.rate_limit.map(Limiter::new),
                admin: c.admin,
            }));
        }
        Ok((ApiClients { clients }, files))
    }

    /// The client holding this bearer token, if any. Every digest is compared,
    /// in constant time, whatever matches.
    pub fn authenticate(&self, bearer: &str) -> Option<&Arc<ApiClient>> {
        let presented = sha256(bearer.as_bytes());
        let mut index: u64 = 0;
        let mut matched = subtle::Choice::from(0);
        for (i, client) in self.clients.iter().enumerate() {
            let (digest, has) = match &client.digest {
                Some(d) => (d, subtle::Choice::from(1)),
                None => (&presented, subtle::Choice::from(0)),
            };
            let hit = digest.ct_eq(&presented) & has;
            index.conditional_assign(&(i as u64), hit);
            matched |= hit;
        }
        bool::from(matched).then(|| &self.clients[index as usize])
    }

    /// The client a verified client certificate names, if any. `names` are
    /// the certificate's DNS and URI subject alternative names;
    /// `common_names` its subject CNs, given only when it has no SANs, and
    /// matched only for clients with `allow_common_name`: a name-constrained
    /// CA is held to its constraints in the SANs, but may write any CN.
    pub fn by_certificate(
        &self,
        names: &[String],
        common_names: &[String],
    ) -> Option<&Arc<ApiClient>> {
        self.clients.iter().find(|c| {
            c.certificate_names
                .iter()
                .any(|n| names.contains(n) || (c.allow_common_name && common_names.contains(n)))
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// A token file others may read is a token others may use.
fn warn_if_exposed(client: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                client,
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the API token file is readable by group or others; chmod 600 it"
            );
        }
    }
}

impl ApiClient {
    /// Takes one mint from this client's rate limit; when none is left, how
    /// long until one is.
    pub fn take_mint(&self, now: Instant) -> Result<(), Duration> {
        match &self.limiter {
            Some(l) => l.take(now),
            None => Ok(()),
        }
    }

    /// Whether this client may act for `cluster` at all (TokenReview).
    pub fn authorize_cluster(&self, cluster: &str) -> Result<(), Forbidden> {
        match &self.clusters {
            Some(clusters) if !clusters.iter().any(|c| c == cluster) => Err(Forbidden {
                client: self.name.clone(),
                scope: format!("for cluster \"{cluster}\""),
            }),
            _ => Ok(()),
        }
    }

    /// Whether this client may mint for `cluster` in `namespace`.
    pub fn authorize(&self, cluster: &str, namespace: &str) -> Result<(), Forbidden> {
        self.authorize_cluster(cluster)?;
        if let Some(namespaces) = &self.namespaces {
            if !namespaces.iter().any(|n| n == namespace) {
                return Err(Forbidden {
                    client: self.name.clone(),
                    scope: format!("in namespace \"{namespace}\" of cluster \"{cluster}\""),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(
        name: &str,
        token: &str,
        clusters: Option<&[&str]>,
        ns: Option<&[&str]>,
    ) -> ApiClientConfig {
        ApiClientConfig {
            name: name.into(),
            credential: Some(Credential::Sha256(sha256(token.as_bytes()))),
            certificate_names: Vec::new(),
            allow_common_name: false,
            rate_limit: None,
            clusters: clusters.map(|c| c.iter().map(|s| s.to_string()).collect()),
            namespaces: ns.map(|c| c.iter().map(|s| s.to_string()).collect()),
            admin: false,
        }
    }

    #[test]
    fn the_right_client_is_found_by_its_token() {
        let (clients, _) = ApiClients::load(
            &[
                client("a", "tok-a", None, None),
                client("b", "tok-b", None, None),
            ],
            Path::new("."),
        )
        .unwrap();
        assert_eq!(clients.authenticate("tok-b").unwrap().name, "b");
        assert_eq!(clients.authenticate("tok-a").unwrap().name, "a");
        assert!(clients.authenticate("tok-c").is_none());
        assert!(clients.authenticate("").is_none());
    }

    #[test]
    fn scopes_limit_clusters_and_namespaces() {
        let (clients, _) = ApiClients::load(
            &[client("ci", "t", Some(&["edge"]), Some(&["ci"]))],
            Path::new("."),
        )
        .unwrap();
        let c = clients.authenticate("t").unwrap();
        assert!(c.authorize("edge", "ci").is_ok());
        assert!(c
            .authorize("demo", "ci")
            .unwrap_err()
            .to_string()
            .contains("cluster \"demo\""));
        assert!(c
            .authorize("edge", "prod")
            .unwrap_err()
            .to_string()
            .contains("namespace \"prod\""));
    }

    #[test]
    fn a_generated_token_file_is_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let cfg = ApiClientConfig {
            name: "admin".into(),
            credential: Some(Credential::File {
                path: "admin.token".into(),
                generate: true,
            }),
            certificate_names: Vec::new(),
            allow_common_name: false,
            rate_limit: None,
            clusters: None,
            namespaces: None,
            admin: false,
        };
        let (clients, files) = ApiClients::load(std::slice::from_ref(&cfg), dir.path()).unwrap();
        assert!(files[0].generated);
        let token = fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let mode = fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(clients.authenticate(token.trim()).is_some());
        let (_, files) = ApiClients::load(&[cfg], dir.path()).unwrap();
        assert!(!files[0].generated);
        assert_eq!(
            fs::read_to_string(dir.path().join("admin.token")).unwrap(),
            token
        );
    }

    #[test]
    fn two_clients_holding_one_token_are_refused_with_both_names() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ci.token"), "tok-a\n").unwrap();
        let mut from_file = client("from-file", "unused", None, None);
        from_file.credential = Some(Credential::File {
            path: "ci.token".into(),
            generate: false,
        });
        let err = ApiClients::load(
            &[client("digest", "tok-a", Some(&["edge"]), None), from_file],
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "API clients \"digest\" and \"from-file\" hold the same bearer token; a token \
             must identify one client, give each its own"
        );
    }

    #[test]
    fn certificate_clients_have_no_bearer_token() {
        let mut cfg = client("cert", "unused", None, None);
        cfg.credential = None;
        cfg.certificate_names = vec!["ci.internal".into()];
        let (clients, _) = ApiClients::load(&[cfg], Path::new(".")).unwrap();
        // The digest of an empty token must not match a client without one.
        assert!(clients.authenticate("").is_none());
        assert!(clients.authenticate("unused").is_none());
        let names = vec!["other".to_string(), "ci.internal".to_string()];
        assert_eq!(clients.by_certificate(&names, &[]).unwrap().name, "cert");
        assert!(clients.by_certificate(&["x".to_string()], &[]).is_none());
    }

    #[test]
    fn a_common_name_names_only_a_client_that_allows_it() {
        let mut strict = client("strict", "a", None, None);
        strict.credential = None;
        strict.certificate_names = vec!["strict.internal".into()];
        let mut legacy = client("legacy", "b", None, None);
        legacy.credential = None;
        legacy.certificate_names = vec!["legacy-runner".into()];
        legacy.allow_common_name = true;
        let (clients, _) = ApiClients::load(&[strict, legacy], Path::new(".")).unwrap();
        assert!(clients
            .by_certificate(&[], &["strict.internal".to_string()])
            .is_none());
        assert_eq!(
            clients
                .by_certificate(&[], &["legacy-runner".to_string()])
                .unwrap()
                .name,
            "legacy"
        );
        assert_eq!(
            clients
                .by_certificate(&["legacy-runner".to_string()], &[])
                .unwrap()
                .name,
            "legacy"
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills() {
        let limiter = Limiter::new(RateLimit {
            per_second: 2.0,
            burst: 3,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(t0).is_ok());
        }
        let wait = limiter.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(limiter.take(t0 + Duration::from_millis(250)).is_err());
        assert!(limiter.take(t0 + Duration::from_millis(600)).is_ok());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.take(later).is_ok());
        }
        assert!(limiter.take(later).is_err());
    }
}
