//! `token` outputs for a target cluster, as the DOCA credential request
//! makes them: `--format secret` (tokenFile and kubeconfig) read by kubectl,
//! `--format env` read alike by a shell and by kubectl's --from-env-file,
//! `--refresh` rewriting a Secret, and every bad output flag refused.
//!
//! `kubectl apply --dry-run=client` is not offline: it maps the kind through
//! the server's discovery (`/api`, `/api/v1`) and reads the live object to
//! diff against, even with `--validate=false`. There is no cluster here, so
//! kubectl is given `empty_cluster`: an HTTP server with the discovery of a
//! core/v1 Secret and no objects (404 for everything else), which is what
//! kubectl sees of an empty namespace. What the Secret holds is checked
//! against kubectl's own offline encoding (`create secret generic
//! --from-file`), which needs no server.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

use crate::delivery::{short_lived, BIN};
use crate::harness::{eventually, make_tls, verify_with_jwks, Options, Server};

const TARGET: &str = "https://api.target.example:6443";

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kubectl with no kubeconfig of the user's, its cache in `home`.
fn kubectl(home: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("kubectl");
    c.env("HOME", home)
        .env_remove("KUBECONFIG")
        .arg("--cache-dir")
        .arg(home.join("kube-cache"));
    c
}

/// Runs kubectl with `stdin` on its standard input; (success, stdout, stderr).
async fn kubectl_with(home: &Path, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = kubectl(home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (the machine image ships it)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An API server with no objects: the discovery kubectl needs to map a
/// core/v1 Secret, and 404 for everything else. Stops when dropped.
struct EmptyCluster {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EmptyCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn empty_cluster() -> EmptyCluster {
    use axum::routing::get;
    use axum::Json;
    use serde_json::json;
    let app = axum::Router::new()
        .route(
            "/api",
            get(|| async { Json(json!({"kind": "APIVersions", "versions": ["v1"]})) }),
        )
        .route(
            "/apis",
            get(|| async {
                Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}))
            }),
        )
        .route(
            "/api/v1",
            get(|| async {
                Json(json!({
                    "kind": "APIResourceList",
                    "groupVersion": "v1",
                    "resources": [{
                        "name": "secrets", "singularName": "secret", "namespaced": true,
                        "kind": "Secret",
                        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]
                    }]
                }))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    EmptyCluster { url, task }
}

/// `kubectl apply --dry-run=client -f -` of `secret`; panics unless accepted.
async fn kubectl_applies(home: &Path, cluster: &EmptyCluster, secret: &[u8], name: &str) {
    let (ok, stdout, stderr) = kubectl_with(
        home,
        &[
            "--server",
            &cluster.url,
            "apply",
            "--dry-run=client",
            "--validate=false",
            "-f",
            "-",
        ],
        secret,
    )
    .await;
    assert!(ok, "kubectl apply refused the Secret: {stderr}");
    assert_eq!(stdout.trim(), format!("secret/{name} created (dry run)"));
}

/// A Secret's `data`, decoded.
fn data(secret: &serde_json::Value) -> BTreeMap<String, Vec<u8>> {
    secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), STANDARD.decode(v.as_str().unwrap()).unwrap()))
        .collect()
}

/// The issuer over https, its CA in `ca.pem`, and a target CA in
/// `target-ca.pem`, another CA than the issuer's.
struct Setup {
    work: tempfile::TempDir,
    s: Server,
    ca_pem: String,
    target_ca_pem: String,
}

impl Setup {
    async fn new() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let keys = work.path().join("keys");
        let tls = make_tls(work.path());
        let s = Server::start(Options {
            tls: Some(&tls),
            ..Options::new(&keys)
        })
        .await;
        std::fs::write(work.path().join("ca.pem"), &tls.ca_pem).unwrap();
        let other = work.path().join("target");
        std::fs::create_dir(&other).unwrap();
        let target_ca_pem = make_tls(&other).ca_pem;
        std::fs::write(work.path().join("target-ca.pem"), &target_ca_pem).unwrap();
        Setup {
            ca_pem: tls.ca_pem,
            s,
            work,
            target_ca_pem,
        }
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).to_str().unwrap().to_owned()
    }

    /// `token` for ws-1/default of cluster demo, with these flags after.
    async fn token(&self, more: &[&str]) -> (i32, String, String) {
        let (server, tf, ca) = (
            self.s.issuer("demo"),
            self.path("keys/admin.token"),
            self.path("ca.pem"),
        );
        let mut args = vec![
            "token",
            "--server",
            &server,
            "--token-file",
            &tf,
            "--ca-file",
            &ca,
            "-n",
            "ws-1",
            "--service-account",
            "default",
        ];
        args.extend(more);
        run(&args).await
    }

    async fn verifies(&self, token: &[u8]) {
        let token = std::str::from_utf8(token).unwrap();
        let jwks = self.s.jwks("demo").await;
        verify_with_jwks(
            token,
            &jwks,
            &self.s.issuer("demo"),
            "https://kubernetes.default.svc",
        )
        .unwrap_or_else(|e| panic!("the token does not verify: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_secret_is_applied_by_kubectl_and_holds_exactly_the_doca_keys() {
    let t = Setup::new().await;
    let target_ca = t.path("target-ca.pem");
    let (code, secret, err) = t
        .token(&[
            "--format",
            "secret",
            "--secret-type",
            "tokenFile",
            "--secret-name",
            "dpu-01-credential",
            "--secret-namespace",
            "default",
            "--label",
            "dpuservice=dpu-01",
            "--label",
            "app.kubernetes.io/part-of=dpf",
            "--target-server",
            TARGET,
            "--target-ca",
            &target_ca,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let cluster = empty_cluster().await;
    let home = t.work.path().join("home");
    kubectl_applies(&home, &cluster, secret.as_bytes(), "dpu-01-credential").await;

    let v: serde_json::Value = serde_json::from_str(&secret).unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["type"], "Opaque");
    assert_eq!(
        v["metadata"],
        serde_json::json!({
            "name": "dpu-01-credential",
            "namespace": "default",
            "labels": {"dpuservice": "dpu-01", "app.kubernetes.io/part-of": "dpf"}
        })
    );
    let d = data(&v);
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        [
            "KUBERNETES_CA_DATA",
            "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT",
            "TOKEN_FILE"
        ]
    );
    t.verifies(&d["TOKEN_FILE"]).await;
    assert_eq!(d["KUBERNETES_SERVICE_HOST"], b"https://api.target.example");
    assert_eq!(d["KUBERNETES_SERVICE_PORT"], b"6443");
    // The target's CA, as the file holds it, not the issuer's.
    assert_eq!(d["KUBERNETES_CA_DATA"], t.target_ca_pem.as_bytes());
    assert_ne!(t.target_ca_pem, t.ca_pem);

    // Encoded once, exactly as kubectl encodes the same values itself.
    let mut from_files = vec![
        "create".to_owned(),
        "secret".into(),
        "generic".into(),
        "dpu-01-credential".into(),
        "--dry-run=client".into(),
        "-o".into(),
        "json".into(),
    ];
    for (key, value) in &d {
        let file = t.work.path().join(key);
        std::fs::write(&file, value).unwrap();
        from_files.push(format!("--from-file={key}={}", file.display()));
    }
    let out = kubectl(&home).args(&from_files).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["data"], v["data"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_secret_holds_a_kubeconfig_for_the_target_that_kubectl_reads() {
    let t = Setup::new().await;
    let target_ca = t.path("target-ca.pem");
    let (code, secret, err) = t
        .token(&[
            "--format",
            "secret",
            "--secret-type",
            "kubeconfig",
            "--secret-name",
            "dpu-01-credential",
            "--target-server",
            TARGET,
            "--target-ca",
            &target_ca,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let cluster = empty_cluster().await;
    let home = t.work.path().join("home");
    kubectl_applies(&home, &cluster, secret.as_bytes(), "dpu-01-credential").await;
    let v: serde_json::Value = serde_json::from_str(&secret).unwrap();
    // No --secret-namespace: none, so kubectl's current namespace applies.
    assert_eq!(
        v["metadata"],
        serde_json::json!({"name": "dpu-01-credential"})
    );
    let d = data(&v);
    assert_eq!(d.keys().collect::<Vec<_>>(), ["kubeconfig"]);

    let file = t.work.path().join("target.kubeconfig");
    std::fs::write(&file, &d["kubeconfig"]).unwrap();
    let view = kubectl(&home)
        .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        view.status.success(),
        "{}",
        String::from_utf8_lossy(&view.stderr)
    );
    let k: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(k["clusters"][0]["cluster"]["server"], TARGET);
    let ca = k["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap();
    assert_eq!(STANDARD.decode(ca).unwrap(), t.target_ca_pem.as_bytes());
    t.verifies(k["users"][0]["user"]["token"].as_str().unwrap().as_bytes())
        .await;

    // Without --target-server: the issuer's own API and CA, as before.
    let (code, secret, err) = t
        .token(&[
            "--format",
            "secret",
            "--secret-type",
            "kubeconfig",
            "--secret-name",
            "own",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&secret).unwrap();
    let text = String::from_utf8(data(&v).remove("kubeconfig").unwrap()).unwrap();
    assert!(
        text.contains(&format!("server: \"{}\"", t.s.issuer("demo"))),
        "{text}"
    );
    assert!(text.contains(&STANDARD.encode(&t.ca_pem)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_env_file_reads_the_same_in_a_shell_and_in_kubectl_from_env_file() {
    let t = Setup::new().await;
    let (target_ca, out) = (t.path("target-ca.pem"), t.path("doca.env"));
    let (code, _, err) = t
        .token(&[
            "--format",
            "env",
            "--target-server",
            TARGET,
            "--target-ca",
            &target_ca,
            "--out",
            &out,
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let keys = [
        "TOKEN_FILE",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_CA_DATA",
    ];
    // A POSIX shell, `set -a; . ./file`: each value on a line of its own.
    let script = format!(
        "set -a; . ./doca.env; printf '%s\\n' {}",
        keys.map(|k| format!("\"${k}\"")).join(" ")
    );
    let sh = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(t.work.path())
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(
        sh.status.success(),
        "{}",
        String::from_utf8_lossy(&sh.stderr)
    );
    let shell: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|k| k.to_string())
        .zip(
            String::from_utf8(sh.stdout)
                .unwrap()
                .lines()
                .map(|l| l.as_bytes().to_vec()),
        )
        .collect();

    // kubectl create secret generic --from-env-file.
    let home = t.work.path().join("home");
    let from_env = format!("--from-env-file={out}");
    let k = kubectl(&home)
        .args([
            "create",
            "secret",
            "generic",
            "x",
            &from_env,
            "--dry-run=client",
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let kubectl_data = data(&serde_json::from_slice(&k.stdout).unwrap());
    assert_eq!(
        kubectl_data, shell,
        "the shell and kubectl read different values"
    );

    t.verifies(&shell["TOKEN_FILE"]).await;
    assert_eq!(
        shell["KUBERNETES_SERVICE_HOST"],
        b"https://api.target.example"
    );
    assert_eq!(shell["KUBERNETES_SERVICE_PORT"], b"6443");
    // One line: base64 of the target's CA PEM.
    assert_eq!(
        STANDARD.decode(&shell["KUBERNETES_CA_DATA"]).unwrap(),
        t.target_ca_pem.as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rewrites_the_secret_with_a_new_token_at_80_percent() {
    let work = tempfile::tempdir().unwrap();
    let keys = work.path().join("keys");
    let s = Server::start(Options {
        clusters: short_lived(),
        ..Options::new(&keys)
    })
    .await;
    let target_ca = work.path().join("target-ca.pem");
    std::fs::write(&target_ca, make_tls(work.path()).ca_pem).unwrap();
    let out = work.path().join("secret.json");
    let mut child = tokio::process::Command::new(BIN)
        .args(["token", "--server", &s.issuer("s"), "--token-file"])
        .arg(keys.join("admin.token"))
        .args([
            "-n",
            "ns",
            "--service-account",
            "sa",
            "--audience",
            "refresh",
        ])
        .args([
            "--duration",
            "5s",
            "--format",
            "secret",
            "--secret-type",
            "tokenFile",
        ])
        .args([
            "--secret-name",
            "creds",
            "--target-server",
            TARGET,
            "--target-ca",
        ])
        .arg(&target_ca)
        .args(["--refresh", "--out"])
        .arg(&out)
        .env("NO_COLOR", "1")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let token_of = |path: &Path| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        String::from_utf8(data(&v).remove("TOKEN_FILE")?).ok()
    };
    let o = out.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let o = o.clone();
            async move { token_of(&o).is_some() }
        })
        .await,
        "no Secret written"
    );
    let first = token_of(&out).unwrap();
    let started = Instant::now();
    let o = out.clone();
    let f = first.clone();
    // A 5 s token is rewritten after about 4 s; every read is a whole Secret.
    assert!(
        eventually(Duration::from_secs(15), || {
            let (o, f) = (o.clone(), f.clone());
            async move {
                let now = token_of(&o).expect("a whole Secret at every read");
                now != f
            }
        })
        .await,
        "the Secret was not rewritten"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "rewritten too early"
    );
    let second = token_of(&out).unwrap();
    let jwks = s.jwks("s").await;
    let claims = verify_with_jwks(&second, &jwks, &s.issuer("s"), "refresh").unwrap();
    let first_claims = crate::harness::decode_part(&first, 1);
    assert!(claims["iat"].as_i64() > first_claims["iat"].as_i64());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        data(&v)["KUBERNETES_SERVICE_HOST"],
        b"https://api.target.example"
    );

    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().unwrap().to_string())
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// Each bad output flag, after `token ... --format`: the flags (`{ca}`,
/// `{key}`, `{both}`, `{text}`, `{broken}` are files; `{target}` is TARGET
/// with its CA) and what the error says.
const BAD: &[(&str, &str)] = &[
    ("kubeconfig --target-server http://api.target.example",
     "--target-server \"http://api.target.example\": http would send the token in clear"),
    ("kubeconfig --target-server api.target.example:6443",
     "--target-server \"api.target.example:6443\": not an https URL; write it as https://HOST[:PORT]"),
    ("kubeconfig --target-server https://t.example --target-ca {key}",
     "holds a PrivateKey section; give a file of CERTIFICATE sections only"),
    ("kubeconfig --target-server https://t.example --target-ca {both}", "holds a PrivateKey section"),
    ("kubeconfig --target-server https://t.example --target-ca {text}", "no PEM certificate in the file"),
    ("kubeconfig --target-server https://t.example --target-ca {broken}",
     "certificate 1 is not a valid X.509 certificate"),
    ("kubeconfig --target-server https://t.example --target-ca /nonexistent/ca.pem",
     "--target-ca /nonexistent/ca.pem: No such file"),
    ("kubeconfig --target-ca {ca}", "--target-ca needs --target-server"),
    ("raw --target-server https://t.example",
     "--target-server and --target-ca apply to --format kubeconfig, secret and env"),
    ("json --secret-name s", "apply to --format secret only"),
    ("secret --secret-name s {target}",
     "--format secret needs --secret-type kubeconfig or --secret-type tokenFile"),
    ("secret --secret-type tokenFile {target}", "--format secret needs --secret-name"),
    ("secret --secret-type tokenFile --secret-name Bad_Name {target}",
     "--secret-name \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of"),
    ("secret --secret-type tokenFile --secret-name s --secret-namespace kube.system {target}",
     "--secret-namespace \"kube.system\": a lowercase RFC 1123 label must consist of"),
    ("secret --secret-type tokenFile --secret-name s --label dpuservice {target}",
     "--label \"dpuservice\": write it as KEY=VALUE"),
    ("secret --secret-type tokenFile --secret-name s --label -k=v {target}",
     "--label \"-k=v\": the key \"-k\" is not valid: a valid label key"),
    ("secret --secret-type tokenFile --secret-name s --label k=-v {target}",
     "--label \"k=-v\": the value \"-v\" is not valid: a valid label value"),
    ("secret --secret-type tokenFile --secret-name s --target-server https://t.example",
     "--secret-type tokenFile needs the API server's CA for KUBERNETES_CA_DATA: pass --target-ca"),
    ("secret --secret-type tokenFile --secret-name s --target-server https://r.example/k8s/c-1 --target-ca {ca}",
     "--secret-type tokenFile names the API server by host and port only, and --target-server \
      https://r.example/k8s/c-1 has the path /k8s/c-1"),
    // The issuer's own API, the default target, lives under its issuer path.
    ("env", "--format env names the API server by host and port only, and --server \
      https://127.0.0.1:9/c/demo has the path /c/demo"),
    ("secret --secret-type file", "[possible values: kubeconfig, tokenFile]"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_output_flags_are_refused_before_minting_with_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tls = make_tls(dir.path());
    let key = std::fs::read_to_string(&tls.key).unwrap();
    let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    for (name, text) in [
        ("bearer", "not-used"),
        ("ca", tls.ca_pem.as_str()),
        ("key", key.as_str()),
        ("both", &format!("{}{key}", tls.ca_pem)),
        ("text", "not a certificate\n"),
        ("broken", broken),
    ] {
        std::fs::write(path(name), text).unwrap();
    }
    for (flags, says) in BAD {
        let mut flags = flags.replace(
            "{target}",
            "--target-server https://t.example --target-ca {ca}",
        );
        for name in ["ca", "key", "both", "text", "broken"] {
            flags = flags.replace(&format!("{{{name}}}"), &path(name));
        }
        let bearer = path("bearer");
        let mut args = vec![
            "token",
            "--server",
            "https://127.0.0.1:9/c/demo",
            "--token-file",
        ];
        args.extend([
            bearer.as_str(),
            "-n",
            "ws-1",
            "--service-account",
            "default",
            "--format",
        ]);
        args.extend(flags.split(' '));
        let (code, stdout, err) = run(&args).await;
        // Exit 2, bad input; nothing minted (nothing listens at port 9: a
        // mint would say "cannot reach"), nothing printed.
        assert_eq!(code, 2, "{flags}: {err}");
        assert!(err.contains(says), "{flags}: expected {says:?} in: {err}");
        assert!(stdout.is_empty(), "{flags}: {stdout}");
    }
}
