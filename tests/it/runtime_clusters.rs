//! Clusters created, recreated and deleted at run time (#14), through the
//! admin API and the CLI, with two servers sharing one keys dir: discovery,
//! JWKS, minting, TokenReview and PyJWT checked at each step.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::terminate;
use crate::harness::eventually;
use crate::harness::node::{discovery, http, jwks_url, kid_of, kids, start, status_of, Node};
use crate::harness::support::{api_client, config_file, token_path, token_sha256};
use crate::interop::{pyjwt, pyjwt_available};

const ADMIN: &str = "admin-token-for-runtime-tests";
const PLAIN: &str = "plain-token-for-runtime-tests";
/// Another server sees a change within one registry poll (250 ms) and the
/// load of the cluster's keys; generous here, measured in the benchmark.
const SEEN: Duration = Duration::from_secs(10);

/// A config with one file cluster, an admin client and a plain one.
fn config(dir: &Path) -> std::path::PathBuf {
    config_file(
        dir,
        &format!(
            "[[clusters]]\nid = \"base\"\nalgorithm = \"ES256\"\n\
             [[api_clients]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nadmin = true\n{}",
            token_sha256(ADMIN),
            api_client("plain", PLAIN)
        ),
    )
}

async fn send(request: reqwest::RequestBuilder, token: &str, body: Option<Value>) -> (u16, Value) {
    let request = request.bearer_auth(token);
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn mint(node: &Node, id: &str) -> String {
    let (status, v) = send(
        http().post(format!("{}{}", node.base, token_path(id, "ws", "runner"))),
        ADMIN,
        Some(json!({"spec": {"audiences": ["sts.example.com"]}})),
    )
    .await;
    assert_eq!(status, 201, "minting for {id} on {}: {v}", node.base);
    v["status"]["token"].as_str().unwrap().to_owned()
}

async fn authenticated(node: &Node, id: &str, token: &str) -> bool {
    let (status, v) = send(
        http().post(format!(
            "{}/c/{id}/apis/authentication.k8s.io/v1/tokenreviews",
            node.base
        )),
        ADMIN,
        Some(
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "spec": {"token": token, "audiences": ["sts.example.com"]}}),
        ),
    )
    .await;
    status == 201 && v["status"]["authenticated"] == true
}

async fn pyjwt_accepts(node: &Node, id: &str, token: &str) -> Option<bool> {
    if !pyjwt_available().await {
        return None;
    }
    let issuer = format!("http://127.0.0.1/c/{id}");
    Some(
        pyjwt(&jwks_url(node, id), &issuer, "sts.example.com", token)
            .await
            .0,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_recreated_and_deleted_through_the_api_on_two_servers_sharing_the_keys_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (a, b) = (start(&cfg), start(&cfg));
    let clusters = |n: &Node| format!("{}/admin/v1/clusters", n.base);

    // Create on A: served there at once, on B within a poll.
    let (status, created) = send(
        http().post(clusters(&a)),
        ADMIN,
        Some(json!({"id": "ws-1", "algorithm": "ES256", "max_token_lifetime": "2h"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["id"], "ws-1");
    assert_eq!(created["issuer"], "http://127.0.0.1/c/ws-1");
    assert_eq!(status_of(&discovery(&a, "ws-1")).await, 200);
    assert!(
        eventually(SEEN, || async {
            status_of(&discovery(&b, "ws-1")).await == 200
        })
        .await,
        "server B never served the cluster A created"
    );
    let (status, listed) = send(http().get(clusters(&b)), ADMIN, None).await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "ws-1"));

    // Minted on B, verified on A: its JWKS, TokenReview, PyJWT.
    let old = mint(&b, "ws-1").await;
    assert!(kids(&a, "ws-1").await.contains(&kid_of(&old)));
    assert!(authenticated(&a, "ws-1", &old).await);
    if let Some(ok) = pyjwt_accepts(&a, "ws-1", &old).await {
        assert!(ok, "PyJWT refused a token of a created cluster");
    }

    // Recreate on B: a new key signs at once, every old key leaves both
    // JWKS, the old token no longer verifies anywhere.
    let old_kids = kids(&a, "ws-1").await;
    let (status, recreated) = send(
        http().post(format!("{}/ws-1/recreate", clusters(&b))),
        ADMIN,
        None,
    )
    .await;
    assert_eq!(status, 200, "{recreated}");
    let fresh = mint(&b, "ws-1").await;
    assert!(!old_kids.contains(&kid_of(&fresh)));
    let b_kids = kids(&b, "ws-1").await;
    assert!(b_kids.contains(&kid_of(&fresh)), "{b_kids:?}");
    assert!(b_kids.iter().all(|k| !old_kids.contains(k)), "{b_kids:?}");
    assert!(
        eventually(SEEN, || async {
            let now = kids(&a, "ws-1").await;
            !now.is_empty() && now.iter().all(|k| !old_kids.contains(k))
        })
        .await,
        "server A still publishes a key of the cluster before it was recreated"
    );
    assert!(!authenticated(&a, "ws-1", &old).await);
    assert!(!authenticated(&b, "ws-1", &old).await);
    assert!(authenticated(&a, "ws-1", &fresh).await);
    if let Some(ok) = pyjwt_accepts(&a, "ws-1", &old).await {
        assert!(
            !ok,
            "PyJWT still accepts a token of the cluster before it was recreated"
        );
    }
    if let Some(ok) = pyjwt_accepts(&a, "ws-1", &fresh).await {
        assert!(ok, "PyJWT refused a token of the recreated cluster");
    }

    // Persisted: a restart of A serves it with the same keys.
    let before = kids(&b, "ws-1").await;
    assert!(terminate(a.process).success());
    let a = start(&cfg);
    assert_eq!(kids(&a, "ws-1").await, before);

    // Delete on A: 404 there at once, on B within a poll; keys gone.
    let (status, deleted) =
        send(http().delete(format!("{}/ws-1", clusters(&a))), ADMIN, None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(status_of(&discovery(&a, "ws-1")).await, 404);
    assert_eq!(status_of(&jwks_url(&a, "ws-1")).await, 404);
    assert!(
        eventually(SEEN, || async {
            status_of(&jwks_url(&b, "ws-1")).await == 404
        })
        .await,
        "server B still serves a deleted cluster"
    );
    assert!(!authenticated(&b, "ws-1", &fresh).await);
    assert!(
        !dir.path().join("keys/ws-1").exists(),
        "the deleted cluster's keys are still on disk"
    );
    // The file's cluster was never touched.
    assert_eq!(status_of(&discovery(&b, "base")).await, 200);
    assert!(terminate(a.process).success());
    assert!(terminate(b.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_requests_get_their_status_and_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let a = start(&cfg);
    let url = format!("{}/admin/v1/clusters", a.base);
    let create = |token: &'static str, body: Value| {
        let url = url.clone();
        async move { send(http().post(url), token, Some(body)).await }
    };
    let (s, v) = create(ADMIN, json!({"id": "ok-1", "algorithm": "ES256"})).await;
    assert_eq!(s, 201, "{v}");

    let cases = [
        (
            json!({"id": "x1", "algorithm": "ES256", "colour": "red"}),
            400,
            "colour",
        ),
        (
            json!({"id": "ok-1", "algorithm": "ES256"}),
            409,
            "already exists",
        ),
        (
            json!({"id": "base", "algorithm": "ES256"}),
            409,
            "already exists",
        ),
        (
            json!({"id": "Not_A_Label", "algorithm": "ES256"}),
            400,
            "DNS label",
        ),
        (json!({"id": "x2", "algorithm": "HS256"}), 400, "HS256"),
        (
            json!({"id": "x3", "algorithm": "ES256", "issuer": "http://127.0.0.1/c/ok-1"}),
            409,
            "same path",
        ),
    ];
    for (body, status, says) in cases {
        let (s, v) = create(ADMIN, body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        assert!(v.to_string().contains(says), "{body} -> {v}");
    }
    let (s, v) = create(PLAIN, json!({"id": "x4", "algorithm": "ES256"})).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = send(http().delete(format!("{url}/base")), ADMIN, None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("config.toml"), "{v}");
    let (s, v) = send(http().delete(format!("{url}/nope")), ADMIN, None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = send(http().delete(format!("{url}/ok-1")), PLAIN, None).await;
    assert_eq!(s, 403, "{v}");
    // Nothing refused was created.
    for id in ["x1", "x2", "x3", "x4"] {
        assert_eq!(status_of(&discovery(&a, id)).await, 404, "{id}");
    }
    assert!(terminate(a.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_recreates_and_removes_clusters_that_running_servers_follow() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (a, b) = (start(&cfg), start(&cfg));
    let cfg_arg = cfg.to_str().unwrap();
    let run = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::harness::run_bin(&args).await
        }
    };

    let (code, out, err) = run(vec![
        "clusters",
        "add",
        "ws-cli",
        "--algorithm",
        "ES256",
        "--config",
        cfg_arg,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    for node in [&a, &b] {
        assert!(
            eventually(SEEN, || async {
                status_of(&discovery(node, "ws-cli")).await == 200
            })
            .await,
            "{} never served the cluster the CLI created",
            node.base
        );
    }
    let old = mint(&a, "ws-cli").await;
    assert!(authenticated(&b, "ws-cli", &old).await);
    if let Some(ok) = pyjwt_accepts(&b, "ws-cli", &old).await {
        assert!(ok, "PyJWT refused a token of a cluster the CLI created");
    }

    let (code, out, err) = run(vec!["clusters", "recreate", "ws-cli", "--config", cfg_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    let old_kid = kid_of(&old);
    for node in [&a, &b] {
        assert!(
            eventually(SEEN, || async {
                let now = kids(node, "ws-cli").await;
                !now.is_empty() && !now.contains(&old_kid)
            })
            .await,
            "{} still publishes the old key after `clusters recreate`",
            node.base
        );
        assert!(!authenticated(node, "ws-cli", &old).await);
    }
    let fresh = mint(&b, "ws-cli").await;
    assert!(authenticated(&a, "ws-cli", &fresh).await);

    let (code, out, err) = run(vec!["clusters", "remove", "ws-cli", "--config", cfg_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
    for node in [&a, &b] {
        assert!(
            eventually(SEEN, || async {
                status_of(&discovery(node, "ws-cli")).await == 404
            })
            .await,
            "{} still serves the cluster the CLI removed",
            node.base
        );
    }
    assert!(terminate(a.process).success());
    assert!(terminate(b.process).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_deleted_and_created_again_at_once_is_served_afresh_by_the_other_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (a, b) = (start(&cfg), start(&cfg));
    let url = format!("{}/admin/v1/clusters", a.base);
    let body = json!({"id": "ws-9", "algorithm": "ES256"});
    let (s, v) = send(http().post(&url), ADMIN, Some(body.clone())).await;
    assert_eq!(s, 201, "{v}");
    assert!(
        eventually(SEEN, || async { !kids(&b, "ws-9").await.is_empty() }).await,
        "server B never served ws-9"
    );
    let old = mint(&b, "ws-9").await;
    let old_kids = kids(&b, "ws-9").await;

    // Deleted and created again on A well within one of B's polls.
    let (s, v) = send(http().delete(format!("{url}/ws-9")), ADMIN, None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = send(
        http().post(&url),
        ADMIN,
        Some(json!({"id": "ws-9", "algorithm": "ES256", "audiences": ["other.example.com"]})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        eventually(SEEN, || async {
            let now = kids(&b, "ws-9").await;
            !now.is_empty() && now.iter().all(|k| !old_kids.contains(k))
        })
        .await,
        "server B still serves the deleted cluster's keys"
    );
    assert!(!authenticated(&b, "ws-9", &old).await);
    // B took the new settings too: the new default audience.
    let (s, v) = send(
        http().post(format!("{}{}", b.base, token_path("ws-9", "ws", "runner"))),
        ADMIN,
        Some(json!({"spec": {}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let token = v["status"]["token"].as_str().unwrap();
    assert_eq!(
        crate::harness::decode_part(token, 1)["aud"],
        json!(["other.example.com"])
    );
    assert!(terminate(a.process).success());
    assert!(terminate(b.process).success());
}
