//! Findings of the red-team review (issue #11), server side: ambiguous API
//! client credentials, certificate names, the generated admin token under
//! concurrent starts, and connections that hold a slot without a request.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");

#[test]
fn check_config_refuses_two_clients_with_one_token_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("twice.toml");
    let digest = "ab".repeat(32);
    std::fs::write(
        &file,
        format!(
            r#"
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
keys_dir = "keys"
[[clusters]]
id = "demo"
[[clusters]]
id = "edge"
[[api_clients]]
name = "narrow"
token_sha256 = "{digest}"
clusters = ["edge"]
namespaces = ["ci"]
[[api_clients]]
name = "wide"
token_sha256 = "{}"
clusters = ["*"]
[[api_clients]]
name = "first-file"
token_file = "shared.token"
clusters = ["edge"]
[[api_clients]]
name = "second-file"
token_file = "./shared.token"
clusters = ["*"]
"#,
            digest.to_uppercase()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "accepted: {stderr}");
    assert!(
        stderr.contains(
            "api_clients[1].token_sha256: the same token is given to both \"narrow\" and \
             \"wide\"; a token must identify one client, give each its own"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "api_clients[3].token_file: \"./shared.token\" is the token file of both \
             \"first-file\" and \"second-file\"; a token must identify one client, give \
             each its own file"
        ),
        "{stderr}"
    );
}
