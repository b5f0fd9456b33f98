//! A cluster that signs its own tokens (`publish_only`): its kube-apiserver
//! keeps `sa.key`; `keys import` publishes `sa.pub` here with the kid
//! kube-apiserver computes, so tokens signed with `sa.key` (by openssl here,
//! as a kube-apiserver would) verify through this issuer's discovery, with
//! the project's `verify` and with PyJWT. Rotation is by hand, under the
//! same publish-ahead and retention rules; nothing here signs for it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::json;

use crate::harness::{eventually, Options, Server};

const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");
const AUDIENCE: &str = "https://sts.example.com";

/// A publish_only cluster "own" beside a generated one, "demo", with
/// timings short enough to rotate by hand in seconds: a next key may sign
/// 2 s after it is published, a retired one stays 4 s.
fn clusters() -> String {
    r#"
[rotation]
interval = "1s"
reload_interval = "1s"

[[clusters]]
id = "own"
publish_only = true
min_token_lifetime = "1s"
max_token_lifetime = "2s"
jwks_max_age = "1s"
publish_ahead = "2s"
rotate_every = "2s"
clock_skew = "1s"

[[clusters]]
id = "demo"
algorithm = "ES256"

[[api_clients]]
name = "admin"
token_file = "admin.token"
generate = true
clusters = ["*"]
"#
    .to_owned()
}

/// The same clusters as a config file for the CLI, over the same keys dir.
fn config_file(dir: &Path, keys: &Path) -> PathBuf {
    config_file_of(dir, keys, &clusters())
}

/// `clusters` as a config file for the CLI, over the keys dir `keys`.
fn config_file_of(dir: &Path, keys: &Path, clusters: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:1\"\nkeys_dir = {:?}\n{}",
        keys.display().to_string(),
        clusters
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An RSA sa.key / sa.pub pair as a cluster's operator makes one.
fn rsa_pair(dir: &Path, name: &str, bits: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    openssl(&["genrsa", "-out", key.to_str().unwrap(), bits]);
    openssl(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (key, public)
}

/// The kid kube-apiserver gives a public key: SHA-256 of its PKIX DER, as
/// openssl writes it (../shared/vectors/README.md), base64url.
fn kubernetes_kid(public_pem: &Path) -> String {
    let der = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        public_pem.to_str().unwrap(),
        "-outform",
        "DER",
    ]);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// The payload kube-apiserver builds for a pod's projected token.
fn kubernetes_claims(issuer: &str) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "aud": [AUDIENCE],
        "exp": now + 3600,
        "iat": now,
        "iss": issuer,
        "jti": "5f0c3c5e-6f3c-4d49-9d55-0b7f5a0e6f11",
        "kubernetes.io": {
            "namespace": "payments",
            "node": {"name": "node-1", "uid": "6e1b8f6c-2a8e-4c55-9a8c-1d2f3a4b5c6d"},
            "pod": {"name": "api-0", "uid": "0b8d9b1e-7c11-4a8e-8d43-2f6a0c1e9b77"},
            "serviceaccount": {"name": "api", "uid": "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"}
        },
        "nbf": now,
        "sub": "system:serviceaccount:payments:api"
    })
}

/// A token signed RS256 with `key` by openssl, as a kube-apiserver with
/// `--service-account-signing-key-file=sa.key` signs it.
fn sign_rs256(dir: &Path, key: &Path, kid: &str, claims: &serde_json::Value) -> String {
    let header = json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let input = dir.join("signing-input");
    std::fs::write(&input, &signed).unwrap();
    let signature = openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

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

async fn keys(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", config.to_str().unwrap()]);
    run(&all).await
}

async fn import(config: &Path, public: &Path, more: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "import",
        "--cluster",
        "own",
        "--public-key",
        public.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    keys(config, &args).await
}

fn kids(jwks: &serde_json::Value) -> Vec<String> {
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

async fn verify(issuer: &str, token: &str) -> (i32, String) {
    let (code, out, err) =
        run(&["verify", "--issuer", issuer, "--audience", AUDIENCE, token]).await;
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_by_the_clusters_own_sa_key_verifies_through_discovery_and_minting_is_refused(
) {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let config = config_file(dir.path(), &keys_dir);
    let (sa_key, sa_pub) = rsa_pair(dir.path(), "sa", "2048");
    let kid = kubernetes_kid(&sa_pub);

    let (code, out, err) = import(&config, &sa_pub, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("imported RS256 public key {kid} as current")),
        "{out}"
    );
    // Only the public key is kept.
    let kept = std::fs::read_to_string(keys_dir.join("own").join(format!("{kid}.pem"))).unwrap();
    assert!(kept.starts_with("-----BEGIN PUBLIC KEY-----") && !kept.contains("PRIVATE"));

    let s = Server::start(Options {
        clusters: clusters(),
        ..Options::new(&keys_dir)
    })
    .await;
    let issuer = s.issuer("own");
    let jwks = s.jwks("own").await;
    assert_eq!(
        kids(&jwks),
        vec![kid.clone()],
        "the JWKS has the Kubernetes kid"
    );
    assert_eq!(jwks["keys"][0]["alg"], "RS256");

    let token = sign_rs256(dir.path(), &sa_key, &kid, &kubernetes_claims(&issuer));
    let (code, out) = verify(&issuer, &token).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("valid token"), "{out}");
    if crate::interop::pyjwt_available().await {
        let jwks_url = format!("{issuer}/openid/v1/jwks");
        let (ok, out) = crate::interop::pyjwt(&jwks_url, &issuer, AUDIENCE, &token).await;
        assert!(ok, "PyJWT refused the cluster's token: {out}");
        let claims: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:payments:api");
    }

    // TokenReview verifies it against the imported key as well.
    let r = s
        .client()
        .post(format!("{issuer}/apis/authentication.k8s.io/v1/tokenreviews"))
        .bearer_auth(&s.admin_token)
        .json(&json!({"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":token,"audiences":[AUDIENCE]}}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"]["authenticated"], true, "{v}");
    assert_eq!(
        v["status"]["user"]["username"],
        "system:serviceaccount:payments:api"
    );

    // A token signed by a key the cluster never published does not verify.
    let (other_key, _) = rsa_pair(dir.path(), "other", "2048");
    let forged = sign_rs256(dir.path(), &other_key, &kid, &kubernetes_claims(&issuer));
    let (code, out) = verify(&issuer, &forged).await;
    assert_ne!(code, 0, "{out}");
    if crate::interop::pyjwt_available().await {
        let jwks_url = format!("{issuer}/openid/v1/jwks");
        let (ok, out) = crate::interop::pyjwt(&jwks_url, &issuer, AUDIENCE, &forged).await;
        assert!(!ok && out.contains("InvalidSignatureError"), "{out}");
    }

    // Nothing here signs for the cluster: minting says why.
    let r = s
        .client()
        .post(s.token_url("own", "payments", "api"))
        .bearer_auth(&s.admin_token)
        .json(&json!({"spec":{"audiences":[AUDIENCE]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(
        v["message"],
        "serviceaccounts \"api\" is forbidden: cluster \"own\" is publish_only: it publishes \
         imported public keys and cannot sign; its own kube-apiserver signs its tokens"
    );
    // Nor does the external signer's endpoint: a relay gets
    // FAILED_PRECONDITION with the same reason.
    let claims = URL_SAFE_NO_PAD.encode(kubernetes_claims(&issuer).to_string());
    let r = s
        .client()
        .post(format!("{issuer}/externaljwt/v1/sign"))
        .bearer_auth(&s.admin_token)
        .json(&json!({ "claims": claims }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "FailedPrecondition", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("cluster \"own\" is publish_only"),
        "{v}"
    );
    // The generated cluster beside it mints as ever.
    s.mint("demo", "payments", "api", json!({})).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs1_and_ec_p256_public_keys_import_with_the_kubernetes_kid() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let config = config_file(dir.path(), &keys_dir);

    // PKCS#1 ("RSA PUBLIC KEY"): the kid is that of the same key in PKIX.
    let (_, sa_pub) = rsa_pair(dir.path(), "sa", "3072");
    let pkcs1 = dir.path().join("sa.pkcs1.pub");
    openssl(&[
        "rsa",
        "-pubin",
        "-in",
        sa_pub.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-out",
        pkcs1.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    let rsa_kid = kubernetes_kid(&sa_pub);
    let (code, out, err) = import(&config, &pkcs1, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&rsa_kid), "{out}");

    // EC P-256, as the next key.
    let ec_key = dir.path().join("ec.key");
    let ec_pub = dir.path().join("ec.pub");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        ec_key.to_str().unwrap(),
    ]);
    openssl(&[
        "pkey",
        "-in",
        ec_key.to_str().unwrap(),
        "-pubout",
        "-out",
        ec_pub.to_str().unwrap(),
    ]);
    let ec_kid = kubernetes_kid(&ec_pub);
    let (code, out, err) = import(&config, &ec_pub, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("imported ES256 public key {ec_kid} as next")),
        "{out}"
    );

    let s = Server::start(Options {
        clusters: clusters(),
        ..Options::new(&keys_dir)
    })
    .await;
    let issuer = s.issuer("own");
    let jwks = s.jwks("own").await;
    let mut want = vec![rsa_kid, ec_kid.clone()];
    want.sort();
    assert_eq!(kids(&jwks), want);
    let discovery: serde_json::Value = s
        .client()
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["ES256", "RS256"])
    );

    // A token the cluster signs with the EC key verifies (the next key is
    // published, so relying parties know it before the cluster switches).
    let pem = std::fs::read(&ec_key).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(ec_kid);
    let token = jsonwebtoken::encode(
        &header,
        &kubernetes_claims(&issuer),
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    let (code, out) = verify(&issuer, &token).await;
    assert_eq!(code, 0, "{out}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_import_and_misuse_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let config = config_file(dir.path(), &keys_dir);
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    // A publish_only cluster with nothing imported does not start.
    let (code, out, err) = run(&["serve", "--config", &path(&config)]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("cluster \"own\" is publish_only and has no keys")
            && err.contains("keys import --cluster own --public-key sa.pub"),
        "{err}"
    );

    let (sa_key, sa_pub) = rsa_pair(dir.path(), "sa", "2048");
    let (_, small) = rsa_pair(dir.path(), "small", "1024");
    let p384 = dir.path().join("p384.pub");
    let p384_key = dir.path().join("p384.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        &path(&p384_key),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path(&p384_key),
        "-pubout",
        "-out",
        &path(&p384),
    ]);
    let cert = dir.path().join("cert.pem");
    openssl(&[
        "req",
        "-x509",
        "-key",
        &path(&sa_key),
        "-subj",
        "/CN=sa",
        "-days",
        "1",
        "-out",
        &path(&cert),
    ]);
    let missing = dir.path().join("nowhere.pub");

    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![path(&sa_key)],
            2,
            "this is a private key (PEM \"PRIVATE KEY\"), not a public key",
        ),
        (
            vec![path(&p384)],
            2,
            "an EC key on curve P-384: only P-256 (ES256) keys are supported",
        ),
        (
            vec![path(&small)],
            2,
            "an RSA key of 1024 bits: only 2048, 3072 or 4096 bits",
        ),
        (
            vec![path(&cert)],
            2,
            "PEM \"CERTIFICATE\" is not a public key",
        ),
        (vec![path(&missing)], 2, "nowhere.pub"),
        (
            vec![path(&sa_pub), "--state".into(), "next".into()],
            1,
            "has no current key yet",
        ),
    ];
    for (args, want, says) in cases {
        let (code, out, err) = import(
            &config,
            Path::new(&args[0]),
            &args[1..].iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(code, want, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(
        !keys_dir.join("own").join("manifest.json").exists(),
        "nothing was imported"
    );

    let (code, _, err) = keys(
        &config,
        &[
            "import",
            "--cluster",
            "nope",
            "--public-key",
            &path(&sa_pub),
        ],
    )
    .await;
    assert!(
        code == 2 && err.contains("no cluster has id \"nope\""),
        "{err}"
    );
    let (code, _, err) = keys(
        &config,
        &[
            "import",
            "--cluster",
            "demo",
            "--public-key",
            &path(&sa_pub),
        ],
    )
    .await;
    assert!(
        code == 2 && err.contains("the cluster is not publish_only"),
        "{err}"
    );

    let (code, out, err) = import(&config, &sa_pub, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = import(&config, &sa_pub, &[]).await;
    assert!(code == 1 && err.contains("duplicate kid"), "{err}");
    let (code, _, err) = keys(&config, &["rotate", "--cluster", "own"]).await;
    assert!(
        code == 2 && err.contains("the cluster is publish_only") && err.contains("keys retire"),
        "{err}"
    );
    let files = std::fs::read_dir(keys_dir.join("own")).unwrap().count();
    assert_eq!(files, 2, "one key file and the manifest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_rotation_publishes_ahead_and_keeps_the_old_key_for_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    // Windows wide enough for a loaded machine: the refusal below must come
    // within publish_ahead of the import, the look at both keys within the
    // retention after the retirement.
    let clusters = clusters()
        .replace("publish_ahead = \"2s\"", "publish_ahead = \"5s\"")
        .replace(
            "rotate_every = \"2s\"",
            "rotate_every = \"6s\"\nretention = \"10s\"",
        );
    let config = config_file_of(dir.path(), &keys_dir, &clusters);
    let (old_key, old_pub) = rsa_pair(dir.path(), "old", "2048");
    let (new_key, new_pub) = rsa_pair(dir.path(), "new", "2048");
    let (_, third_pub) = rsa_pair(dir.path(), "third", "2048");
    let (old_kid, new_kid) = (kubernetes_kid(&old_pub), kubernetes_kid(&new_pub));
    assert_eq!(import(&config, &old_pub, &[]).await.0, 0);
    let s = Server::start(Options {
        clusters,
        ..Options::new(&keys_dir)
    })
    .await;
    let issuer = s.issuer("own");

    // The next key is imported ahead; the running server publishes it.
    let (code, out, err) = import(&config, &new_pub, &["--state", "next"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Retiring the old key waits until the next one was published publish_ahead.
    let retire_args = ["retire", "--cluster", "own", "--kid", old_kid.as_str()];
    let retire = || keys(&config, &retire_args);
    let (code, _, err) = retire().await;
    assert!(
        code == 1
            && err.contains("less than publish_ahead (5s)")
            && err.contains("It can take over from"),
        "{err}"
    );
    let both = {
        let mut k = vec![old_kid.clone(), new_kid.clone()];
        k.sort();
        k
    };
    let published = eventually(Duration::from_secs(10), || async {
        kids(&s.jwks("own").await) == both
    })
    .await;
    assert!(published, "the server did not publish the next key");

    // A key never published may not replace the current one (without --force).
    let (code, _, err) = import(&config, &third_pub, &["--state", "current"]).await;
    assert!(
        code == 1
            && err.contains(&format!("already has a current key {old_kid}"))
            && err.contains("--state next"),
        "{err}"
    );

    let retired = eventually(Duration::from_secs(15), || async { retire().await.0 == 0 }).await;
    assert!(retired, "keys retire never succeeded");
    // The retired key stays published for its retention.
    assert_eq!(kids(&s.jwks("own").await), both);
    let (_, listed, _) = keys(&config, &["list", "--cluster", "own", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let states: Vec<(String, String, bool)> = listed["clusters"][0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
                k["imported"] == true,
            )
        })
        .collect();
    assert!(
        states.contains(&(old_kid.clone(), "retired".into(), true)),
        "{states:?}"
    );
    assert!(
        states.contains(&(new_kid.clone(), "current".into(), true)),
        "{states:?}"
    );

    // Both keys' tokens verify while the old key is within its retention...
    let old_token = sign_rs256(dir.path(), &old_key, &old_kid, &kubernetes_claims(&issuer));
    let new_token = sign_rs256(dir.path(), &new_key, &new_kid, &kubernetes_claims(&issuer));
    let (code, out) = verify(&issuer, &new_token).await;
    assert_eq!(code, 0, "{out}");

    // ...then the background takes the old key out, and generates none.
    let gone = eventually(Duration::from_secs(30), || async {
        kids(&s.jwks("own").await) == [new_kid.clone()]
    })
    .await;
    assert!(gone, "the retired key was not removed after its retention");
    assert!(!keys_dir.join("own").join(format!("{old_kid}.pem")).exists());
    let (code, out) = verify(&issuer, &old_token).await;
    assert_ne!(code, 0, "{out}");
    let (code, out) = verify(&issuer, &new_token).await;
    assert_eq!(code, 0, "{out}");
    let pems = std::fs::read_dir(keys_dir.join("own"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".pem")
        })
        .count();
    assert_eq!(pems, 1, "no key was generated for the cluster");
    s.stop().await;
}
