//! Names the commit the binary is built from, for `--version` and the
//! start-up log: `git rev-parse --short HEAD`, or "unknown" outside a git
//! checkout (the Docker build copies no `.git`, a source archive has none).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
}

/// The short commit of HEAD, and the files whose change moves it, so the
/// binary is rebuilt when it does: HEAD itself (a checkout), the branch it
/// points to (a commit) and the packed refs. In a worktree these are in
/// different directories, which `git rev-parse --git-path` resolves.
fn commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = [
        Some("HEAD".to_owned()),
        branch,
        Some("packed-refs".to_owned()),
    ];
    for name in watched.into_iter().flatten() {
        // Only existing files: a missing one would make cargo rerun this
        // script on every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    Some(commit)
}

/// What `git ARGS` prints, trimmed; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
