//! The agent's Unix socket: bound so that no one can connect to it before
//! it has its mode, whatever the umask.
//!
//! Plain file-system work; nothing of the server side.

use std::path::Path;

use super::ClientError;

/// Binds `path` with `mode`, creating its missing parent directories with
/// mode 0700, so that no one else can reach the socket before
/// it has its mode: bound in a fresh 0700 directory beside `path`, given its
/// mode there, then renamed into place. (Bound in `path`'s own directory, it
/// was reachable with the umask's mode until the chmod; a local user watching
/// the directory connected in that window. Setting the umask instead needs
/// `unsafe`.)
pub(super) fn bind_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, ClientError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let err = |e: std::io::Error| ClientError::Input(format!("--socket {}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ClientError::Input(format!(
                "--socket {}: exists and is not a socket",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ClientError::Input(format!(
                "--socket {}: another process is listening on it",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(err)?; // a stale socket
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Missing directories are made, private to this user, as `token --out`
    // does: the README's /run/workload/... need not exist first.
    crate::fsutil::ensure_dir(dir, 0o700).map_err(|e| {
        ClientError::Input(format!(
            "--socket {}: cannot create the directory {}: {e}",
            path.display(),
            dir.display()
        ))
    })?;
    // A random name: one guessed and made beforehand by someone else fails
    // the create instead of being used. Short, as a socket path has 107 bytes.
    let private = dir.join(format!(
        ".agent-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| {
            ClientError::Input(format!(
                "--socket {}: cannot create {} to bind in: {e}",
                path.display(),
                private.display()
            ))
        })?;
    let tmp = private.join("s");
    let placed = (|| {
        let listener = tokio::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let _ = std::fs::remove_dir(&private);
    placed.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn the_socket_gets_its_mode_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("agent.sock");
        let _listener = bind_socket(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["agent.sock"]);
    }

    #[tokio::test]
    async fn a_socket_in_missing_directories_gets_them_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/workload/agent.sock");
        let _listener = bind_socket(&path, 0o600).unwrap();
        for d in ["run", "run/workload"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        // A file where a directory should be: the flag is named.
        std::fs::write(dir.path().join("file"), "").unwrap();
        let path = dir.path().join("file/agent.sock");
        let err = bind_socket(&path, 0o600).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--socket {}: cannot create", path.display())),
            "{err}"
        );
    }
}
