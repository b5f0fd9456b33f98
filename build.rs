//! Names the commit the binary is built from, for `--version` and the
//! start-up log: `git rev-parse --short HEAD`, or "unknown" outside a git
//! checkout (the Docker build copies no `.git`, a source archive has none).
//!
//! Also generates the gRPC service glue of Kubernetes' `ExternalJWTSigner`
//! (src/externaljwt/externaljwt.proto) with tonic-build's manual builder, for the
//! prost messages written by hand in src/externaljwt/proto.rs: a plain
//! `cargo build` needs no protoc.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = commit().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BUILD_GIT_COMMIT={commit}");
    external_jwt_signer();
}

/// The service under both packages kube-apiserver dials: `v1` (1.34 and
/// later) and `v1alpha1` (1.32, 1.33). The messages are the same Rust types.
fn external_jwt_signer() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::externaljwt::proto::{input}"))
            .output_type(format!("crate::externaljwt::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let services: Vec<_> = ["v1", "v1alpha1"]
        .into_iter()
        .map(|package| {
            tonic_build::manual::Service::builder()
                .name("ExternalJWTSigner")
                .package(package)
                .method(method("sign", "Sign", "SignJwtRequest", "SignJwtResponse"))
                .method(method(
                    "fetch_keys",
                    "FetchKeys",
                    "FetchKeysRequest",
                    "FetchKeysResponse",
                ))
                .method(method(
                    "metadata",
                    "Metadata",
                    "MetadataRequest",
                    "MetadataResponse",
                ))
                .build()
        })
        .collect();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&services);
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
