//! API clients: who may mint, for which clusters and namespaces.
//!
//! Bearer tokens are held only as SHA-256 digests; a presented token is hashed
//! and compared with every client's digest in constant time, so neither the
//! comparison nor which client matched shows in the timing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};

use crate::config::{ApiClientConfig, Credential};
use crate::fsutil::write_atomic;

#[derive(Debug)]
pub struct ApiClient {
    pub name: String,
    digest: [u8; 32],
    clusters: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
}

#[derive(Debug, Default)]
pub struct ApiClients {
    clients: Vec<ApiClient>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("API client \"{client}\": token file {path}: {source}")]
    Io {
        client: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("API client \"{client}\": token file {path} is empty")]
    Empty { client: String, path: PathBuf },
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
                Credential::Sha256(d) => *d,
                Credential::File { path, generate } => {
                    let path = keys_dir.join(path);
                    let io_err = |source| AuthConfigError::Io {
                        client: c.name.clone(),
                        path: path.clone(),
                        source,
                    };
                    let mut generated = false;
                    if *generate && !path.exists() {
                        let token = new_token().map_err(io_err)?;
                        if let Some(dir) = path.parent() {
                            crate::fsutil::ensure_dir(dir, 0o700).map_err(io_err)?;
                        }
                        write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
                            .map_err(io_err)?;
                        generated = true;
                    }
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
                    sha256(token.as_bytes())
                }
            };
            clients.push(ApiClient {
                name: c.name.clone(),
                digest,
                clusters: c.clusters.clone(),
                namespaces: c.namespaces.clone(),
            });
        }
        Ok((ApiClients { clients }, files))
    }

    /// The client holding this bearer token, if any. Every digest is compared,
    /// in constant time, whatever matches.
    pub fn authenticate(&self, bearer: &str) -> Option<&ApiClient> {
        let presented = sha256(bearer.as_bytes());
        let mut index: u64 = 0;
        let mut matched = subtle::Choice::from(0);
        for (i, client) in self.clients.iter().enumerate() {
            let hit = client.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), hit);
            matched |= hit;
        }
        bool::from(matched).then(|| &self.clients[index as usize])
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

impl ApiClient {
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
            credential: Credential::Sha256(sha256(token.as_bytes())),
            clusters: clusters.map(|c| c.iter().map(|s| s.to_string()).collect()),
            namespaces: ns.map(|c| c.iter().map(|s| s.to_string()).collect()),
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
            credential: Credential::File {
                path: "admin.token".into(),
                generate: true,
            },
            clusters: None,
            namespaces: None,
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
}
