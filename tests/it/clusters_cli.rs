//! `clusters add|list|show|remove|recreate` on a keys dir with no server
//! running, and `keys` commands on the clusters they create.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::support::{config_file, BIN};

/// A config with one cluster of its own, `demo` (ES256), keys in `dir/keys`.
fn config(dir: &Path) -> PathBuf {
    config_file(dir, "[[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n")
}

/// Runs the binary with `args` and `--config`: exit code, stdout, stderr.
fn run(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("WORKLOAD_ISSUER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed; its stdout.
fn ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(config, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
}

/// Runs a command that must fail with bad input (exit 2); its stderr.
fn bad(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(config, args);
    assert_eq!(code, 2, "{args:?}: {stdout}{stderr}");
    stderr
}

fn show(config: &Path, id: &str) -> Value {
    serde_json::from_str(&ok(config, &["clusters", "show", id, "--json"])).unwrap()
}

fn kids(view: &Value) -> Vec<String> {
    view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn clusters_are_added_listed_shown_and_removed_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let out = ok(
        &config,
        &[
            "clusters",
            "add",
            "ws-1",
            "--algorithm",
            "ES256",
            "--audience",
            "sts.amazonaws.com",
            "--audience",
            "vault",
            "--max-token-lifetime",
            "2h",
        ],
    );
    assert!(
        out.contains("created cluster ws-1 (ES256 (P-256)), issuer http://127.0.0.1/c/ws-1"),
        "{out}"
    );
    ok(
        &config,
        &[
            "clusters",
            "add",
            "ws-2",
            "--algorithm",
            "RS256",
            "--rsa-bits",
            "3072",
            "--issuer",
            "https://tenant.example.com/ws-2",
        ],
    );

    let list: Value = serde_json::from_str(&ok(&config, &["clusters", "list", "--json"])).unwrap();
    let ids: Vec<(&str, &str)> = list["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["origin"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [("demo", "file"), ("ws-1", "runtime"), ("ws-2", "runtime")]
    );
    let table = ok(&config, &["clusters", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ws-2") && l.contains("RS256") && l.ends_with("/ws-2")),
        "{table}"
    );

    let ws1 = show(&config, "ws-1");
    assert_eq!(ws1["issuer"], "http://127.0.0.1/c/ws-1");
    assert_eq!(
        ws1["audiences"],
        serde_json::json!(["sts.amazonaws.com", "vault"])
    );
    assert_eq!(ws1["max_token_lifetime"], "2h");
    assert_eq!(ws1["keys"][0]["state"], "current");
    assert!(ws1["created"].is_string());
    let ws2 = show(&config, "ws-2");
    assert_eq!(ws2["rsa_bits"], 3072);
    assert_eq!(ws2["issuer"], "https://tenant.example.com/ws-2");
    let text = ok(&config, &["clusters", "show", "ws-1"]);
    assert!(text.contains("created at run time"), "{text}");

    // The keys commands see clusters created at run time.
    let kid = kids(&ws1).remove(0);
    let keys = ok(&config, &["keys", "list", "--cluster", "ws-1"]);
    assert!(keys.contains(&kid), "{keys}");

    let out = ok(&config, &["clusters", "remove", "ws-1"]);
    assert!(out.contains(&kid), "the removed kid is named: {out}");
    assert!(!dir.path().join("keys/ws-1").exists(), "its keys are gone");
    let err = bad(&config, &["clusters", "show", "ws-1"]);
    assert!(err.contains("no cluster has id \"ws-1\""), "{err}");
    let err = bad(&config, &["keys", "list", "--cluster", "ws-1"]);
    assert!(err.contains("no cluster has id \"ws-1\""), "{err}");
    // The id is free again, and a new cluster under it has keys of its own.
    ok(
        &config,
        &["clusters", "add", "ws-1", "--algorithm", "ES256"],
    );
    assert!(!kids(&show(&config, "ws-1")).contains(&kid));
}

#[test]
fn a_recreated_cluster_has_new_keys_and_none_of_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    ok(
        &config,
        &["clusters", "add", "ws-1", "--algorithm", "ES256"],
    );
    // A second key, as a rotation leaves one.
    ok(&config, &["keys", "rotate", "--cluster", "ws-1", "--force"]);
    let old = kids(&show(&config, "ws-1"));
    assert_eq!(old.len(), 2, "{old:?}");

    let out = ok(&config, &["clusters", "recreate", "ws-1"]);
    assert!(out.contains("tokens they signed no longer verify"), "{out}");
    let view = show(&config, "ws-1");
    let new = kids(&view);
    assert_eq!(new.len(), 1);
    assert!(old.iter().all(|k| !new.contains(k)), "{old:?} {new:?}");
    assert!(view["recreated"].is_string(), "{view}");
    assert_eq!(view["issuer"], "http://127.0.0.1/c/ws-1", "the same issuer");
    for kid in &old {
        let file = dir.path().join(format!("keys/ws-1/{kid}.pem"));
        assert!(!file.exists(), "{} remains", file.display());
    }

    // A cluster of the config file may be recreated too.
    let out = ok(&config, &["clusters", "recreate", "demo"]);
    assert!(out.contains("recreated cluster demo"), "{out}");
    assert_eq!(kids(&show(&config, "demo")).len(), 1);
}

#[test]
fn bad_input_is_exit_2_naming_the_flag_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    ok(
        &config,
        &["clusters", "add", "ws-1", "--algorithm", "ES256"],
    );
    let before = ok(&config, &["clusters", "list", "--json"]);
    for (args, words) in [
        (
            &["clusters", "add", "Ws_2", "--algorithm", "ES256"][..],
            "ID: \"Ws_2\" must be a DNS label",
        ),
        (
            &["clusters", "add", "ws-2", "--algorithm", "HS256"],
            "--algorithm: \"HS256\" is not supported",
        ),
        (
            &["clusters", "add", "ws-2", "--algorithm", "ES256", "--max-token-lifetime", "5x"],
            "--max-token-lifetime: \"5x\" is not a duration",
        ),
        (
            &["clusters", "add", "ws-1", "--algorithm", "ES256"],
            "ID: a cluster with id \"ws-1\" already exists (created at run time)",
        ),
        (
            &["clusters", "add", "demo", "--algorithm", "ES256"],
            "ID: a cluster with id \"demo\" already exists (declared in the config file)",
        ),
        (
            &[
                "clusters",
                "add",
                "ws-2",
                "--algorithm",
                "ES256",
                "--issuer",
                "https://other.example.com/c/ws-1",
            ],
            "--issuer: \"https://other.example.com/c/ws-1\" has the same path as cluster \"ws-1\"'s issuer",
        ),
        (&["clusters", "remove", "nope"], "no cluster has id \"nope\""),
        (&["clusters", "recreate", "nope"], "no cluster has id \"nope\""),
        (&["clusters", "remove", "../keys"], "no cluster has id \"../keys\""),
    ] {
        let err = bad(&config, args);
        assert!(err.contains(words), "{args:?}: {err}");
    }
    let err = bad(&config, &["clusters", "remove", "demo"]);
    assert!(
        err.contains(&format!(
            "cluster \"demo\" is declared in {}",
            config.display()
        )),
        "{err}"
    );
    assert_eq!(ok(&config, &["clusters", "list", "--json"]), before);
    assert!(!dir.path().join("keys/ws-2").exists());
}
