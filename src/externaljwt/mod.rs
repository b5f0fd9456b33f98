//! Kubernetes' external service-account token signer (REFERENCE §9, KEP-740):
//! the `ExternalJWTSigner` gRPC service kube-apiserver dials on a Unix socket
//! (`--service-account-signing-endpoint`), under both packages it knows
//! (`v1` for 1.34 and later, `v1alpha1` for 1.32 and 1.33).
//!
//! - `proto`: the messages and the generated service glue (wire only);
//! - this module: the [`Backend`] a signer answers from, the adapter that
//!   serves one backend under both packages, and the socket: created 0600
//!   (0660 with a group), a stale one replaced, removed on exit.
//!
//! Protocol only, in the bottom layer: imports nothing of the crate. Two
//! backends serve it: `signer`, inside `serve`, over a cluster's live key
//! set, and the client side's relay (`client::relay`), over the issuer's API.

pub mod proto;

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use proto::{
    FetchKeysRequest, FetchKeysResponse, MetadataRequest, MetadataResponse, SignJwtRequest,
    SignJwtResponse,
};

/// What answers the three calls. `sign` gets the payload exactly as
/// kube-apiserver sent it (base64url JSON); the backend checks it.
pub trait Backend: Send + Sync + 'static {
    fn sign(&self, claims: String) -> impl Future<Output = Result<SignJwtResponse, Status>> + Send;
    fn fetch_keys(&self) -> impl Future<Output = Result<FetchKeysResponse, Status>> + Send;
    fn metadata(&self) -> impl Future<Output = Result<MetadataResponse, Status>> + Send;
}

/// One backend, served under both proto packages.
pub struct Service<B>(Arc<B>);

impl<B> Clone for Service<B> {
    fn clone(&self) -> Self {
        Service(self.0.clone())
    }
}

// The two packages' traits are the same three calls on the same messages.
macro_rules! serve_package {
    ($package:ident) => {
        #[tonic::async_trait]
        impl<B: Backend> proto::$package::external_j_w_t_signer_server::ExternalJWTSigner
            for Service<B>
        {
            async fn sign(
                &self,
                request: Request<SignJwtRequest>,
            ) -> Result<Response<SignJwtResponse>, Status> {
                self.0
                    .sign(request.into_inner().claims)
                    .await
                    .map(Response::new)
            }

            async fn fetch_keys(
                &self,
                _request: Request<FetchKeysRequest>,
            ) -> Result<Response<FetchKeysResponse>, Status> {
                self.0.fetch_keys().await.map(Response::new)
            }

            async fn metadata(
                &self,
                _request: Request<MetadataRequest>,
            ) -> Result<Response<MetadataResponse>, Status> {
                self.0.metadata().await.map(Response::new)
            }
        }
    };
}

serve_package!(v1);
serve_package!(v1alpha1);

/// A Unix socket bound for the signer, at its final path with its final
/// mode. The file is removed when this is dropped, if it is still ours.
pub struct Socket {
    listener: Option<UnixListener>,
    path: PathBuf,
    inode: u64,
}

/// Binds the signer's socket at `path`, mode 0600, or 0660 owned by group
/// `gid`. A socket file nobody listens on (left by a crash) is replaced;
/// a live one, one we may not connect to, or anything that is not a socket,
/// is refused.
///
/// The socket is bound in a fresh directory of mode 0700 beside `path`,
/// given its group and mode there, then renamed into place: nobody else can
/// connect to it before it has its final mode, whatever the umask.
pub async fn bind(path: &Path, gid: Option<u32>) -> io::Result<Socket> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::net::UnixStream::connect(path).await {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{shown}: another process is serving on this socket; stop it or choose another path"),
                    ))
                }
                // Only "nobody listens" makes a socket stale: a socket we may
                // not connect to, or one whose backlog is full, may be live.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{shown}: a socket is there and connecting to it failed ({e}); refusing to replace it"),
                    ))
                }
            }
            tracing::info!(path = %shown, "replacing a stale signer socket nobody answers on");
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{shown}: exists and is not a socket; refusing to replace it"),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{shown}: {e}"))),
    }
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{shown}: not a file path"),
        ));
    }
    let private = path.with_file_name(format!(".wi-signer-{}", std::process::id()));
    // Left by a crashed process with our pid: ours to remove.
    let _ = std::fs::remove_dir_all(&private);
    let placed = (|| {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let temp = private.join("s");
        let listener = UnixListener::bind(&temp)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&temp, None, Some(gid))?;
        }
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temp, path)?;
        let inode = std::fs::symlink_metadata(path)?.ino();
        Ok::<_, io::Error>((listener, inode))
    })();
    let _ = std::fs::remove_dir_all(&private);
    match placed {
        Ok((listener, inode)) => Ok(Socket {
            listener: Some(listener),
            path: path.to_owned(),
            inode,
        }),
        Err(e) => Err(io::Error::new(e.kind(), format!("{shown}: {e}"))),
    }
}

impl Socket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // Only our own socket: a successor may already have replaced it.
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Serves `backend` under both packages on `socket` until `shutdown`
/// resolves; the socket file is removed when this returns.
pub async fn serve<B: Backend>(
    mut socket: Socket,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let Some(listener) = socket.listener.take() else {
        return Ok(());
    };
    let service = Service(backend);
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(
            proto::v1::external_j_w_t_signer_server::ExternalJWTSignerServer::new(service.clone()),
        )
        .add_service(
            proto::v1alpha1::external_j_w_t_signer_server::ExternalJWTSignerServer::new(service),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    drop(socket);
    result.map_err(|e| io::Error::other(format!("the signer's gRPC server failed: {e}")))
}

/// A `FetchKeysResponse`: every key published for discovery (none is
/// verify-only), the time the set changed, and when to ask again.
pub fn fetch_keys_response(
    keys: impl IntoIterator<Item = (String, Vec<u8>)>,
    changed: std::time::Duration,
    refresh_hint_seconds: i64,
) -> FetchKeysResponse {
    FetchKeysResponse {
        keys: keys
            .into_iter()
            .map(|(key_id, key)| proto::Key {
                key_id,
                key,
                exclude_from_oidc_discovery: false,
            })
            .collect(),
        data_timestamp: Some(proto::Timestamp {
            seconds: i64::try_from(changed.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(changed.subsec_nanos()).unwrap_or(0),
        }),
        refresh_hint_seconds,
    }
}

/// The numeric id of a group given by name or number, from /etc/group.
pub fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")?;
    // group(5): name:password:GID:members
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group {group:?} in /etc/group; give its name or numeric id"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer.sock");
        std::fs::write(&path, "precious").unwrap();
        let err = bind(&path, None).await.err().unwrap().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = bind(&path, None).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, None).await.err().unwrap().to_string();
        assert!(err.contains("another process is serving"), "{err}");
        drop(socket);
        assert!(!path.exists(), "the socket is removed with its owner");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_group_is_found_by_name_or_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        let err = group_id("no-such-group-here").unwrap_err().to_string();
        assert!(err.contains("no group \"no-such-group-here\""), "{err}");
    }
}
