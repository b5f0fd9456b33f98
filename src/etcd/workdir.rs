//! Where a working copy lives: a private directory of this process's own,
//! on memory where the machine has it.
//!
//! The owner holds an exclusive lock on `<copy>/.owner` for its whole life.
//! A copy whose lock anyone can take was left by a process that is gone (a
//! crash) and is removed, since it holds keys in the clear; a copy whose
//! lock is held is never touched, whatever its name says (a process of
//! another PID namespace sharing `cache_dir` has pids this one cannot see).
//! Before committing, the owner checks that `.owner` is still the file it
//! locked: a copy removed or replaced under it (a clean-up job, a hand) is
//! never taken for the truth.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

const OWNER: &str = ".owner";
const PREFIX: &str = "workload-issuer-";

/// A working copy's directory, locked by this process while it lives.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    owner: File,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `.owner` is still the file this process locked: the copy was
    /// neither removed nor replaced.
    pub fn intact(&self) -> bool {
        let (Ok(held), Ok(now)) = (self.owner.metadata(), fs::metadata(self.path.join(OWNER)))
        else {
            return false;
        };
        held.dev() == now.dev() && held.ino() == now.ino()
    }

    /// Makes the directory and its lock again after it was removed.
    pub fn renew(&mut self) -> io::Result<()> {
        make_dir(&self.path)?;
        self.owner = lock_owner(&self.path)?;
        Ok(())
    }
}

/// A private directory for a working copy, `<base>/workload-issuer-<pid>-<n>`,
/// where base is `cache_dir`, else /dev/shm (memory, never a disk) when it
/// is there and writable, else the OS temp dir. Abandoned copies are removed
/// first.
pub fn private_dir(cache_dir: Option<&Path>) -> io::Result<WorkDir> {
    let bases: Vec<PathBuf> = match cache_dir {
        Some(dir) => vec![dir.to_owned()],
        None => vec![PathBuf::from("/dev/shm"), std::env::temp_dir()],
    };
    let mut last = None;
    for base in bases {
        remove_abandoned(&base);
        match make_private(&base) {
            Ok(dir) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no directory for a working copy")))
}

/// Removes the copies whose owner's lock is free: their process is gone.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let Ok(owner) = File::open(entry.path().join(OWNER)) else {
            continue; // not a copy this code made, or one being made
        };
        if owner.try_lock().is_ok() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn make_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn lock_owner(dir: &Path) -> io::Result<File> {
    let path = dir.join(OWNER);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    file.lock()?;
    Ok(file)
}

fn make_private(base: &Path) -> io::Result<WorkDir> {
    let pid = std::process::id();
    for n in 0..1000 {
        let path = base.join(format!("{PREFIX}{pid}-{n}"));
        match make_dir(&path) {
            Ok(()) => {
                let owner = lock_owner(&path).map_err(|e| {
                    io::Error::new(e.kind(), format!("{}: {e}", path.join(OWNER).display()))
                })?;
                return Ok(WorkDir { path, owner });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("making a private working copy in {}: {e}", base.display()),
                ))
            }
        }
    }
    Err(io::Error::other(format!(
        "no free working-copy name in {}",
        base.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_in_use_is_never_removed_and_an_abandoned_one_is() {
        let base = tempfile::tempdir().unwrap();
        let live = private_dir(Some(base.path())).unwrap();
        // One left by a process that is gone: its lock is free.
        let left = base.path().join(format!("{PREFIX}999999-0"));
        make_dir(&left).unwrap();
        drop(lock_owner(&left).unwrap());
        fs::write(left.join("k.pem"), b"clear key").unwrap();

        let other = private_dir(Some(base.path())).unwrap();
        assert!(!left.exists(), "the abandoned copy stays");
        assert!(
            live.path().exists() && live.intact(),
            "a live copy was removed"
        );
        assert_ne!(live.path(), other.path());

        // Removed under its owner: no longer intact, until renewed.
        let mut live = live;
        fs::remove_dir_all(live.path()).unwrap();
        assert!(!live.intact());
        live.renew().unwrap();
        assert!(live.intact());
    }
}
