//! Where a working copy lives: a private directory of this process's own,
//! on memory where the machine has it, and copies left by a crash removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A private directory for a working copy: `<base>/workload-issuer-<pid>-<n>`,
/// where base is `cache_dir`, else /dev/shm (memory, never a disk) when it
/// is there and writable, else the OS temp dir. Copies left by processes
/// that are gone (a crash) are removed first: they hold keys in the clear.
pub fn private_dir(cache_dir: Option<&Path>) -> io::Result<PathBuf> {
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

/// Removes the working copies of processes that are gone.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("workload-issuer-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn make_private(base: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    for n in 0..1000 {
        let dir = base.join(format!("workload-issuer-{pid}-{n}"));
        let mut builder = fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
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
