//! Sealing key files for etcd: AES-256-GCM under a key-encryption key (KEK)
//! read from `kek_file`, with the cluster id and kid as associated data, so a
//! sealed key copied under another cluster's or kid's name does not open.
//!
//! A sealed value is JSON: `{"sealed":"A256GCM","kek":"<id>","nonce":…,
//! "ciphertext":…}` (base64url). The KEK's id is the first 8 bytes of its
//! SHA-256, in hex: enough to say "this was sealed under another KEK"
//! instead of a bare decryption failure, and nothing that helps guess it.
//!
//! Imports nothing of the crate but `fsutil`.

use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The length of a KEK: AES-256.
pub const KEK_LEN: usize = 32;
const ALG: &str = "A256GCM";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: a key-encryption key file holds exactly {KEK_LEN} bytes, this one {len}; \
         make one with `workload-issuer store new-kek FILE`"
    )]
    Length { path: PathBuf, len: u64 },
    #[error("{path} is readable or writable by group or others (mode {mode:o}): chmod 600 it")]
    Mode { path: PathBuf, mode: u32 },
    #[error("{path} already exists: a key-encryption key is never overwritten (it may still open keys in etcd)")]
    Exists { path: PathBuf },
    #[error(
        "the key {what} was sealed under the key-encryption key {sealed_by}, but kek_file \
         ({path}) and extra_kek_files hold only {ours}: point kek_file at the KEK the store \
         was sealed with, or list that one in extra_kek_files while the KEK is replaced"
    )]
    OtherKek {
        what: String,
        sealed_by: String,
        ours: String,
        path: PathBuf,
    },
    #[error("the key {what} does not open under the key-encryption key {kek} ({path}): its sealed value was altered, or it was copied from another cluster or kid")]
    Open {
        what: String,
        kek: String,
        path: PathBuf,
    },
    #[error("the key {what} is not a sealed value: {reason}")]
    Format { what: String, reason: String },
}

/// A key-encryption key, as read from its file.
pub struct Kek {
    key: LessSafeKey,
    id: String,
    path: PathBuf,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("path", &self.path)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    sealed: String,
    kek: String,
    nonce: String,
    ciphertext: String,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The KEK that seals (`kek_file`) and those that only open
/// (`extra_kek_files`): while the KEK is replaced, every replica opens keys
/// sealed under either.
#[derive(Debug)]
pub struct Keyring {
    seals: Kek,
    opens: Vec<Kek>,
}

impl Keyring {
    pub fn new(seals: Kek, opens: Vec<Kek>) -> Keyring {
        Keyring { seals, opens }
    }

    /// Reads `kek_file` and `extra_kek_files`.
    pub fn read(kek_file: &Path, extra: &[PathBuf]) -> Result<Keyring, SealError> {
        let seals = Kek::read(kek_file)?;
        let opens = extra
            .iter()
            .map(|p| Kek::read(p))
            .collect::<Result<_, _>>()?;
        Ok(Keyring::new(seals, opens))
    }

    /// The KEK that seals.
    pub fn sealing(&self) -> &Kek {
        &self.seals
    }

    pub fn seal(&self, cluster: &str, kid: &str, clear: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seals.seal(cluster, kid, clear)
    }

    /// Opens a value sealed under any of the ring's KEKs.
    pub fn open(&self, cluster: &str, kid: &str, value: &[u8]) -> Result<Vec<u8>, SealError> {
        let by = sealed_by(value);
        let kek = std::iter::once(&self.seals)
            .chain(&self.opens)
            .find(|k| by.as_deref() == Some(k.id()));
        match kek {
            Some(kek) => kek.open(cluster, kid, value),
            // Not ours: the sealing KEK says which it is and which it is not.
            None if self.opens.is_empty() => self.seals.open(cluster, kid, value),
            None => self.seals.open(cluster, kid, value).map_err(|e| match e {
                SealError::OtherKek {
                    what,
                    sealed_by,
                    ours,
                    path,
                } => SealError::OtherKek {
                    what,
                    sealed_by,
                    ours: std::iter::once(ours)
                        .chain(self.opens.iter().map(|k| k.id().to_owned()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    path,
                },
                e => e,
            }),
        }
    }
}

/// The id of the KEK a sealed value names, if it is one.
pub fn sealed_by(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Sealed>(value).ok().map(|s| s.kek)
}

/// What a sealed key is bound to: the cluster and the kid.
fn aad(cluster: &str, kid: &str) -> Vec<u8> {
    format!("workload-issuer/key/v1\0{cluster}\0{kid}").into_bytes()
}

impl Kek {
    /// Writes a new random KEK to `path` (mode 0600), refusing to replace a
    /// file that exists.
    pub fn generate(path: &Path) -> Result<Kek, SealError> {
        let mut bytes = [0u8; KEK_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| io_err(path)(io::Error::other("the system's random source failed")))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => SealError::Exists {
                    path: path.to_owned(),
                },
                _ => io_err(path)(e),
            })?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(path))?;
        Kek::from_bytes(&bytes, path)
    }

    /// Reads a KEK file: exactly 32 bytes, readable by this user alone.
    pub fn read(path: &Path) -> Result<Kek, SealError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SealError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() != KEK_LEN as u64 {
            return Err(SealError::Length {
                path: path.to_owned(),
                len: meta.len(),
            });
        }
        let bytes =
            rsa::pkcs8::der::zeroize::Zeroizing::new(std::fs::read(path).map_err(io_err(path))?);
        if bytes.len() != KEK_LEN {
            return Err(SealError::Length {
                path: path.to_owned(),
                len: bytes.len() as u64,
            });
        }
        Kek::from_bytes(&bytes, path)
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Kek, SealError> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| SealError::Length {
            path: path.to_owned(),
            len: bytes.len() as u64,
        })?;
        Ok(Kek {
            key: LessSafeKey::new(key),
            id,
            path: path.to_owned(),
        })
    }

    /// The KEK's id (what a sealed value names).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Seals a key file's bytes for `cluster`'s `kid`.
    pub fn seal(&self, cluster: &str, kid: &str, clear: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| {
            io_err(&self.path)(io::Error::other("the system's random source failed"))
        })?;
        let mut buf = clear.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(cluster, kid)),
                &mut buf,
            )
            .map_err(|_| SealError::Format {
                what: format!("{cluster}/{kid}"),
                reason: "sealing failed".into(),
            })?;
        let sealed = Sealed {
            sealed: ALG.into(),
            kek: self.id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(&buf),
        };
        Ok(serde_json::to_vec(&sealed).expect("a sealed value serializes"))
    }

    /// Opens what [`seal`](Self::seal) made for the same cluster and kid.
    pub fn open(&self, cluster: &str, kid: &str, value: &[u8]) -> Result<Vec<u8>, SealError> {
        let what = format!("{cluster}/{kid}");
        let format = |reason: String| SealError::Format {
            what: what.clone(),
            reason,
        };
        let sealed: Sealed = serde_json::from_slice(value).map_err(|e| format(e.to_string()))?;
        if sealed.sealed != ALG {
            return Err(format(format!(
                "sealed with {:?}, expected {ALG:?}",
                sealed.sealed
            )));
        }
        if sealed.kek != self.id {
            return Err(SealError::OtherKek {
                what,
                sealed_by: sealed.kek,
                ours: self.id.clone(),
                path: self.path.clone(),
            });
        }
        let nonce: [u8; NONCE_LEN] = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| format("the nonce is not 12 base64url bytes".into()))?;
        let mut buf = B64
            .decode(&sealed.ciphertext)
            .map_err(|e| format(format!("the ciphertext is not base64url: {e}")))?;
        let clear = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(cluster, kid)),
                &mut buf,
            )
            .map_err(|_| SealError::Open {
                what: what.clone(),
                kek: self.id.clone(),
                path: self.path.clone(),
            })?;
        Ok(clear.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_for_its_cluster_and_kid_under_its_kek() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate(&dir.path().join("kek")).unwrap();
        let sealed = kek
            .seal("demo", "k1", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        let text = String::from_utf8(sealed.clone()).unwrap();
        assert!(!text.contains("PRIVATE"), "{text}");
        assert_eq!(
            kek.open("demo", "k1", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let moved = kek.open("edge", "k1", &sealed).unwrap_err().to_string();
        assert!(moved.contains("copied from another cluster"), "{moved}");
        assert!(kek.open("demo", "k2", &sealed).is_err());

        let other = Kek::generate(&dir.path().join("other")).unwrap();
        let wrong = other.open("demo", "k1", &sealed).unwrap_err().to_string();
        assert!(
            wrong.contains("sealed under the key-encryption key"),
            "{wrong}"
        );
        assert!(
            wrong.contains(kek.id()) && wrong.contains(other.id()),
            "{wrong}"
        );
    }

    #[test]
    fn a_keyring_opens_under_any_of_its_keks_and_seals_under_kek_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (old_path, new_path) = (dir.path().join("old"), dir.path().join("new"));
        let old = Kek::generate(&old_path).unwrap();
        Kek::generate(&new_path).unwrap();
        let sealed_old = old.seal("demo", "k1", b"key").unwrap();
        let ring = Keyring::read(&new_path, std::slice::from_ref(&old_path)).unwrap();
        assert_eq!(ring.open("demo", "k1", &sealed_old).unwrap(), b"key");
        let sealed_new = ring.seal("demo", "k2", b"key2").unwrap();
        assert_eq!(sealed_by(&sealed_new).as_deref(), Some(ring.sealing().id()));
        assert!(
            old.open("demo", "k2", &sealed_new).is_err(),
            "sealed under kek_file"
        );
        // Without the old KEK: refused, naming the KEK it was sealed under.
        let alone = Keyring::read(&new_path, &[]).unwrap();
        let e = alone
            .open("demo", "k1", &sealed_old)
            .unwrap_err()
            .to_string();
        assert!(e.contains(old.id()), "{e}");
    }

    #[test]
    fn a_kek_file_is_32_private_bytes_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let kek = Kek::generate(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(Kek::read(&path).unwrap().id(), kek.id());
        let again = Kek::generate(&path).unwrap_err().to_string();
        assert!(again.contains("never overwritten"), "{again}");

        let short = dir.path().join("short");
        std::fs::write(&short, b"0123456789").unwrap();
        std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let e = Kek::read(&short).unwrap_err().to_string();
        assert!(
            e.contains("exactly 32 bytes, this one 10") && e.contains("store new-kek"),
            "{e}"
        );

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let e = Kek::read(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
