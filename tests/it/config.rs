//! Layered configuration through the binary: built-in defaults, a file that
//! holds only what it changes, `WORKLOAD_ISSUER_*` variables, flags; and
//! `check-config` reporting every unknown field with its line, and every
//! problem of a `[store]` table.

use std::process::Command;

use crate::cli::{http_get, spawn_serve, terminate};
use crate::harness::{check_config, BIN};

#[test]
fn serve_runs_on_environment_variables_and_a_file_holding_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let file = dir.path().join("one-cluster.toml");
    std::fs::write(
        &file,
        "[[clusters]]\nid = \"solo\"\nalgorithm = \"ES256\"\n",
    )
    .unwrap();
    let (child, addr, _) = spawn_serve(
        &[],
        &[
            ("WORKLOAD_ISSUER_CONFIG", file.to_str().unwrap()),
            ("WORKLOAD_ISSUER_LISTEN", "127.0.0.1:0"),
            ("WORKLOAD_ISSUER_PUBLIC_URL", "https://env.example.com"),
            ("WORKLOAD_ISSUER_KEYS_DIR", keys.to_str().unwrap()),
            ("WORKLOAD_ISSUER_CLUSTERS__0__JWKS_MAX_AGE", "5m"),
            ("WORKLOAD_ISSUER_CLUSTERS__0__PUBLISH_AHEAD", "10m"),
            ("WORKLOAD_ISSUER_ROTATION__ENABLED", "false"),
        ],
    );
    let discovery = http_get(&addr, "/c/solo/.well-known/openid-configuration");
    assert!(
        discovery.contains(r#""issuer":"https://env.example.com/c/solo""#),
        "{discovery}"
    );
    let jwks = http_get(&addr, "/c/solo/openid/v1/jwks");
    assert!(jwks.to_ascii_lowercase().contains("max-age=300"), "{jwks}");
    assert!(jwks.contains(r#""alg":"ES256""#), "{jwks}");
    // The file lists a cluster and no client: the embedded demo (cluster
    // "demo", client "admin") is not mixed in.
    assert!(http_get(&addr, "/c/demo/openid/v1/jwks").starts_with("HTTP/1.1 404"));
    assert!(!keys.join("admin.token").exists());
    assert!(terminate(child).success());
}

#[test]
fn an_unknown_or_malformed_variable_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--keys-dir"])
        .arg(dir.path().join("keys"))
        .env_remove("WORKLOAD_ISSUER_CONFIG")
        .env("WORKLOAD_ISSUER_LISTN", "127.0.0.1:0")
        .env("WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WORKLOAD_ISSUER_LISTN: "), "{stderr}");
    assert!(
        stderr.contains("WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS: \"lots\" is not an integer"),
        "{stderr}"
    );
    assert!(!dir.path().join("keys").exists(), "nothing is started");
}

#[test]
fn check_config_reports_every_unknown_field_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typos.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:8080\"\n\
         listen_port = 8080\n\
         [limits]\n\
         max_conections = 10\n\
         [[clusters]]\n\
         id = \"a\"\n\
         algo = \"ES256\"\n",
    )
    .unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2));
    for needle in [
        "line 2: unknown field `listen_port`",
        "line 4: unknown field `max_conections` in [limits]",
        "line 7: unknown field `algo` in clusters[0]",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
}

#[test]
fn check_config_names_each_problem_of_an_etcd_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.toml");
    std::fs::write(
        &file,
        "[store]\n\
         kind = \"etcd\"\n\
         endpoints = [\"http://127.0.0.1:2379\", \"etcd-1\"]\n\
         prefix = \"/workload-issuer/\"\n\
         ca_file = \"ca.pem\"\n\
         username = \"issuer\"\n\
         lease_ttl = \"90s\"\n",
    )
    .unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2), "{stderr}");
    for needle in [
        "store.endpoints[1]: \"etcd-1\" has no scheme; write it as https://host:port",
        "store.kek_file: required with kind = \"etcd\"",
        "store.prefix: \"/workload-issuer/\" must not end with '/'",
        "store.ca_file: TLS needs https:// endpoints",
        "store.password_file: required when store.username is set",
        "store.lease_ttl: 1m 30s must be between 2s and 1m",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }

    // The same table, right, is valid; and kind = "dir" refuses its fields.
    let kek = file.with_file_name("kek");
    std::fs::write(
        &file,
        format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"https://etcd-0:2379\"]\nkek_file = {:?}\n",
            kek.display().to_string()
        ),
    )
    .unwrap();
    // The KEK is read as `serve` reads it: missing, then readable by
    // others, is refused; 32 private bytes pass.
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
    std::fs::write(&kek, [7u8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(0), "{stderr}");
    std::fs::write(&file, "[store]\nendpoints = [\"https://etcd-0:2379\"]\n").unwrap();
    let (code, stderr) = check_config(&file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("store.endpoints: applies only to kind = \"etcd\""),
        "{stderr}"
    );
}
