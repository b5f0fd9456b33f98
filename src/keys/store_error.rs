//! What can go wrong in the key store, each error naming the file and
//! what to do about it.

use std::io;
use std::path::{Path, PathBuf};

use super::manifest::MANIFEST;
use super::material::{KeyError, KeySpec};
use super::public::PublicKeyError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a valid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    #[error("{path}: {source}")]
    Public {
        path: PathBuf,
        #[source]
        source: PublicKeyError,
    },
    #[error("{path}: the key's kid is {actual}, but the manifest says {expected}")]
    KidMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("generating a {spec} key failed: {source}")]
    Generate { spec: KeySpec, source: KeyError },
    #[error(
        "{dir}: the manifest of cluster \"{cluster}\" {what}, but the directory holds {} key \
         file(s) ({}): which key signs and which are retired is unknown, so nothing was \
         changed or deleted. Restore {MANIFEST} from a backup, or rebuild it from the key \
         files with `workload-issuer keys recover --cluster {cluster}`",
        .files.len(), .files.join(", ")
    )]
    ManifestMissing {
        dir: PathBuf,
        cluster: String,
        what: &'static str,
        files: Vec<String>,
    },
    #[error(
        "{path} {problem}: {fix} (and check how it came to be so), or set \
         allow_insecure_key_permissions = true"
    )]
    Insecure {
        path: PathBuf,
        problem: String,
        fix: &'static str,
    },
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}
