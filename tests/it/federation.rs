//! `federation check` and `federation print`: an export bundle and tokens
//! built to break one provider rule each fail on exactly that rule and pass
//! once fixed; a real issuer over TLS, with a real minted token, passes
//! every provider; and what `print` writes is what `check` accepts.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use workload_issuer::client::federation::{
    check, http_client_resolving, render, CheckOptions, Finding, PrintOptions, Provider, RoleFiles,
    Status,
};
use workload_issuer::config::{Config, Overrides};

use crate::harness::{make_tls, Options, Server};

const BIN: &str = env!("CARGO_BIN_EXE_workload-issuer");
const GCP_PROVIDER: &str =
    "projects/123456789012/locations/global/workloadIdentityPools/workloads/providers/prod";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An issuer, its documents, a token and each provider's role side, all
/// healthy until a case breaks one thing.
#[derive(Clone)]
struct Fixture {
    /// The issuer as registered with the providers (`--issuer`).
    registered: String,
    /// The issuer in discovery, the token and the role files.
    issuer: String,
    keys: Vec<Value>,
    alg: &'static str,
    sub: String,
    aud: Vec<String>,
    lifetime: i64,
    /// The namespace the AWS trust policy's sub condition names.
    policy_namespace: &'static str,
    gcp_condition: &'static str,
}

impl Fixture {
    fn healthy() -> Fixture {
        let issuer = "https://oidc.example.com/c/prod".to_owned();
        Fixture {
            registered: issuer.clone(),
            issuer,
            keys: vec![rsa_key("k1")],
            alg: "RS256",
            sub: "system:serviceaccount:ws-1:default".into(),
            aud: vec![
                "sts.amazonaws.com".into(),
                format!("//iam.googleapis.com/{GCP_PROVIDER}"),
                "api://AzureADTokenExchange".into(),
                "vault".into(),
            ],
            lifetime: 3600,
            policy_namespace: "ws-1",
            gcp_condition: "attribute.namespace == 'ws-1'",
        }
    }

    fn token(&self) -> String {
        let header = json!({"alg": self.alg, "kid": self.keys[0]["kid"], "typ": "JWT"});
        let iat = now() - 60;
        let claims = json!({
            "iss": self.issuer, "sub": self.sub, "aud": self.aud,
            "iat": iat, "nbf": iat, "exp": iat + self.lifetime,
            "kubernetes.io": {"namespace": "ws-1", "serviceaccount": {"name": "default", "uid": "u"}},
        });
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        // The rules read the token as a provider decodes it; the signature
        // is `verify`'s (and the real-issuer test's) business.
        format!(
            "{}.{}.{}",
            part(&header),
            part(&claims),
            URL_SAFE_NO_PAD.encode([7u8; 64])
        )
    }

    /// Writes the bundle and role files into `dir` and checks `provider`.
    async fn check(&self, dir: &Path, provider: Provider) -> Vec<Finding> {
        let host_path = self.issuer.split_once("://").unwrap().1;
        let write = |name: &str, v: Value| {
            let path = dir.join(name);
            std::fs::write(&path, v.to_string()).unwrap();
            path
        };
        let discovery = write(
            "openid-configuration",
            json!({"issuer": self.issuer, "jwks_uri": format!("{}/openid/v1/jwks", self.issuer),
                   "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                   "id_token_signing_alg_values_supported": [self.alg]}),
        );
        let jwks = write("jwks", json!({"keys": self.keys}));
        let roles = RoleFiles {
            aws_trust_policy: Some(write(
                "trust.json",
                json!({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Federated": format!("arn:aws:iam::111122223333:oidc-provider/{host_path}")},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {"StringEquals": {
                        format!("{host_path}:sub"): format!("system:serviceaccount:{}:default", self.policy_namespace),
                        format!("{host_path}:aud"): "sts.amazonaws.com"}}}]}),
            )),
            gcp_provider: Some(write(
                "gcp.json",
                json!({"name": GCP_PROVIDER, "state": "ACTIVE",
                       "attributeMapping": {"google.subject": "assertion.sub",
                           "attribute.namespace": "assertion['kubernetes.io']['namespace']"},
                       "attributeCondition": self.gcp_condition,
                       "oidc": {"issuerUri": self.issuer}}),
            )),
            azure_credential: Some(write(
                "azure.json",
                json!({"name": "prod-ws-1", "issuer": self.issuer, "subject": self.sub,
                       "audiences": ["api://AzureADTokenExchange"]}),
            )),
            vault_role: Some(write(
                "vault.json",
                json!({"data": {"role_type": "jwt", "user_claim": "sub",
                       "bound_audiences": ["vault"], "bound_claims_type": "glob",
                       "bound_claims": {"/kubernetes.io/namespace": "ws-*"},
                       "jwt_supported_algs": ["RS256", "ES256"],
                       "oidc_discovery_url": self.issuer}}),
            )),
        };
        let options = CheckOptions {
            issuer: Some(self.registered.clone()),
            providers: vec![provider],
            token: Some(self.token()),
            discovery: Some(discovery),
            jwks: Some(jwks),
            roles,
            ..CheckOptions::default()
        };
        let http = http_client_resolving(None, &[]).unwrap();
        check(&http, &options, SystemTime::now()).await.unwrap()
    }
}

fn rsa_key(kid: &str) -> Value {
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB"})
}

fn failed(findings: &[Finding]) -> Vec<&'static str> {
    findings
        .iter()
        .filter(|f| f.status == Status::Fail)
        .map(|f| f.rule)
        .collect()
}

#[tokio::test]
async fn each_broken_rule_fails_alone_and_passes_once_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = Fixture::healthy();
    type Break = fn(&mut Fixture);
    let cases: Vec<(&str, Provider, &str, Break)> = vec![
        ("trailing slash", Provider::Azure, "azure.iss", |f| {
            f.registered.push('/')
        }),
        ("port", Provider::Aws, "aws.issuer-port", |f| {
            f.issuer = "https://oidc.example.com:8443/c/prod".into();
            f.registered = f.issuer.clone();
        }),
        ("http", Provider::Gcp, "gcp.issuer-https", |f| {
            f.issuer = "http://oidc.example.com/c/prod".into();
            f.registered = f.issuer.clone();
        }),
        ("ES256 for Azure", Provider::Azure, "azure.alg", |f| {
            f.alg = "ES256";
            f.keys = vec![
                json!({"kty": "EC", "kid": "e1", "use": "sig", "alg": "ES256",
                "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]),
                "y": URL_SAFE_NO_PAD.encode([2u8; 32])}),
            ];
        }),
        ("101 keys", Provider::Aws, "aws.jwks-keys", |f| {
            f.keys = (0..101).map(|i| rsa_key(&format!("k{i}"))).collect();
        }),
        ("130-byte subject", Provider::Gcp, "gcp.subject", |f| {
            f.sub = format!("system:serviceaccount:ws-1:{}", "a".repeat(103));
        }),
        ("49 h lifetime", Provider::Gcp, "gcp.lifetime", |f| {
            f.lifetime = 49 * 3600
        }),
        ("wrong audience", Provider::Vault, "vault.aud", |f| {
            f.aud.retain(|a| a != "vault")
        }),
        ("wrong audience", Provider::Gcp, "gcp.aud", |f| {
            f.aud.retain(|a| !a.contains("iam.googleapis.com"))
        }),
        (
            "trust policy for another namespace",
            Provider::Aws,
            "aws.trust-policy",
            |f| f.policy_namespace = "ws-2",
        ),
        (
            "CEL condition that rejects",
            Provider::Gcp,
            "gcp.condition",
            |f| {
                f.gcp_condition =
                    "attribute.namespace == 'ws-2' || google.subject.endsWith(':admin')"
            },
        ),
    ];
    for (what, provider, rule, breaks) in cases {
        let mut broken = healthy.clone();
        breaks(&mut broken);
        let findings = broken.check(dir.path(), provider).await;
        assert_eq!(failed(&findings), [rule], "{what}: {findings:#?}");
        let line = findings.iter().find(|f| f.rule == rule).unwrap().line();
        assert!(line.starts_with(&format!("FAIL {rule}")), "{what}: {line}");
        assert!(line.contains(" saw "), "{what}: {line}");
        // Fixed: the same check on the healthy fixture fails nothing.
        let findings = healthy.check(dir.path(), provider).await;
        assert_eq!(
            failed(&findings),
            Vec::<&str>::new(),
            "{what} fixed: {findings:#?}"
        );
    }
}

#[tokio::test]
async fn the_refusing_condition_is_named_in_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fixture::healthy();
    f.policy_namespace = "ws-2";
    let findings = f.check(dir.path(), Provider::Aws).await;
    let line = findings
        .iter()
        .find(|x| x.rule == "aws.trust-policy")
        .unwrap()
        .line();
    assert!(
        line.contains(
            "StringEquals \"oidc.example.com/c/prod:sub\" = \"system:serviceaccount:ws-2:default\""
        ) && line.contains("system:serviceaccount:ws-1:default"),
        "{line}"
    );
    let mut f = Fixture::healthy();
    f.gcp_condition = "attribute.namespace == 'ws-2'";
    let findings = f.check(dir.path(), Provider::Gcp).await;
    let line = findings
        .iter()
        .find(|x| x.rule == "gcp.condition")
        .unwrap()
        .line();
    assert!(line.contains("attribute.namespace == 'ws-2'"), "{line}");
}

/// A server whose one RS256 cluster has the issuer https://localhost/c/demo,
/// reached at its port through `--resolve`, as a provider reaches it on 443.
async fn localhost_issuer(dir: &Path, tls: &crate::harness::Tls) -> Server {
    Server::start(Options {
        tls: Some(tls),
        clusters: "[[clusters]]\nid = \"demo\"\nalgorithm = \"RS256\"\n\
                   issuer = \"https://localhost/c/demo\"\n\
                   [[api_clients]]\nname = \"admin\"\ntoken_file = \"admin.token\"\n\
                   generate = true\nclusters = [\"*\"]\n"
            .into(),
        ..Options::new(dir)
    })
    .await
}

#[tokio::test]
async fn a_healthy_issuer_and_its_minted_token_pass_every_provider() {
    let dir = tempfile::tempdir().unwrap();
    let tls = make_tls(dir.path());
    let server = localhost_issuer(&dir.path().join("keys"), &tls).await;
    let issuer = "https://localhost/c/demo";
    let token = server
        .mint(
            "demo",
            "ws-1",
            "default",
            json!({"spec": {"audiences": ["sts.amazonaws.com", "api://AzureADTokenExchange",
                format!("//iam.googleapis.com/{GCP_PROVIDER}"), "vault"], "expirationSeconds": 3600}}),
        )
        .await;
    // The AWS trust policy as `federation print aws` writes it for this
    // cluster; the other role files as each provider's tools print them.
    let config = Config::parse(
        "print",
        "public_url = \"https://localhost\"\nkeys_dir = \"/nonexistent\"\n\
         [[clusters]]\nid = \"demo\"\nalgorithm = \"RS256\"\n",
        &Overrides::default(),
    )
    .unwrap();
    let trust = render(
        &config,
        &PrintOptions {
            provider: Provider::Aws,
            config: None,
            cluster: "demo".into(),
            namespace: "ws-1".into(),
            service_account: "default".into(),
            audience: None,
            aws_account: Some("111122223333".into()),
        },
    )
    .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let roles = RoleFiles {
        aws_trust_policy: Some(write("trust.json", trust)),
        gcp_provider: Some(write(
            "gcp.json",
            json!({"name": GCP_PROVIDER, "attributeMapping": {"google.subject": "assertion.sub",
                   "attribute.namespace": "assertion['kubernetes.io']['namespace']"},
                   "attributeCondition": "attribute.namespace.startsWith('ws-')",
                   "oidc": {"issuerUri": issuer}})
            .to_string(),
        )),
        azure_credential: Some(write(
            "azure.json",
            json!({"issuer": issuer, "subject": "system:serviceaccount:ws-1:default",
                   "audiences": ["api://AzureADTokenExchange"]})
            .to_string(),
        )),
        vault_role: Some(write(
            "vault.json",
            json!({"bound_audiences": "vault", "bound_subject": "system:serviceaccount:ws-1:default",
                   "user_claim": "sub", "oidc_discovery_url": issuer})
            .to_string(),
        )),
    };
    let addr = server.base.trim_start_matches("https://").parse().unwrap();
    let options = CheckOptions {
        issuer: Some(issuer.into()),
        providers: Provider::ALL.to_vec(),
        token: Some(token.clone()),
        resolve: vec![("localhost".into(), addr)],
        roles,
        ..CheckOptions::default()
    };
    let http = http_client_resolving(Some(tls.ca_pem.as_bytes()), &options.resolve).unwrap();
    let findings = check(&http, &options, SystemTime::now()).await.unwrap();
    let not_passed: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.status != Status::Pass)
        .collect();
    assert!(not_passed.is_empty(), "{not_passed:#?}");
    // What an operator reads: values as they are, not Rust's debug forms.
    for f in &findings {
        let line = f.line();
        assert!(!line.contains("Some(") && !line.contains("[]"), "{line}");
    }
    for rule in [
        "aws.trust-policy",
        "gcp.condition",
        "azure.credential",
        "vault.claims",
        "aws.fetch-time",
    ] {
        assert!(
            findings.iter().any(|f| f.rule == rule),
            "{rule} not checked"
        );
    }

    // The binary, as an operator runs it: exit 0, one line per rule.
    let token_file = write("token.jwt", token);
    let ca_file = write("ca.pem", tls.ca_pem.clone());
    let out = tokio::process::Command::new(BIN)
        .args([
            "federation",
            "check",
            "--issuer",
            issuer,
            "--provider",
            "all",
        ])
        .arg("--token")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(&ca_file)
        .output()
        .await
        .unwrap();
    // Without --resolve, localhost:443 is not this server: a clear error.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach https://localhost/c/demo/.well-known/openid-configuration"),
        "{out:?}"
    );
    let out = tokio::process::Command::new(BIN)
        .args([
            "federation",
            "check",
            "--issuer",
            issuer,
            "--provider",
            "all",
        ])
        .arg("--token")
        .arg(&token_file)
        .arg("--ca-file")
        .arg(&ca_file)
        .arg("--resolve")
        .arg(format!("localhost={addr}"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("pass azure.alg")),
        "{stdout}"
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
    server.stop().await;
}

#[tokio::test]
async fn the_binary_checks_an_export_bundle_and_exits_1_on_a_failed_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = Fixture::healthy();
    f.issuer = "https://oidc.example.com:8443/c/prod".into();
    f.registered = f.issuer.clone();
    f.check(dir.path(), Provider::Aws).await; // writes the files
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["federation", "check", "--provider", "aws"])
            .arg("--discovery")
            .arg(dir.path().join("openid-configuration"))
            .arg("--jwks")
            .arg(dir.path().join("jwks"))
            .args(extra);
        cmd.output().unwrap()
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL aws.issuer-port")
            && l.contains("\"oidc.example.com:8443\"")
            && l.contains("serve the issuer on 443")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("skip aws.aud")),
        "{stdout}"
    );
    // Bad input is exit 2 with the flag named.
    let out = run(&["--aws-trust-policy", "/nonexistent/trust.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--aws-trust-policy /nonexistent/trust.json")
    );
}

#[tokio::test]
async fn print_writes_commands_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"https://oidc.example.com\"\nkeys_dir = {:?}\n\
             [[clusters]]\nid = \"prod\"\nalgorithm = \"ES256\"\n",
            dir.path().join("keys").display().to_string()
        ),
    )
    .unwrap();
    let print = |provider: &str| {
        std::process::Command::new(BIN)
            .args([
                "federation",
                "print",
                provider,
                "--cluster",
                "prod",
                "-n",
                "ws-1234",
            ])
            .args([
                "--service-account",
                "default",
                "--aws-account",
                "111122223333",
            ])
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let vault = print("vault");
    let text = String::from_utf8_lossy(&vault.stdout);
    assert!(vault.status.success(), "{vault:?}");
    assert!(
        text.contains("oidc_discovery_url=https://oidc.example.com/c/prod"),
        "{text}"
    );
    assert!(text.contains("jwt_supported_algs=ES256"), "{text}");
    assert!(
        text.contains("bound_subject=system:serviceaccount:ws-1234:default"),
        "{text}"
    );
    // An ES256 cluster cannot federate with Azure: said, not printed.
    let azure = print("azure");
    assert_eq!(azure.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&azure.stderr).contains("RS256 only"),
        "{azure:?}"
    );
    let aws = print("aws");
    let policy: Value = serde_json::from_slice(&aws.stdout).unwrap();
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["oidc.example.com/c/prod:sub"],
        "system:serviceaccount:ws-1234:default"
    );
}

#[test]
fn the_guides_registration_blocks_are_what_print_writes() {
    // deploy/federation.md's example cluster.
    let config = Config::parse(
        "guide",
        "public_url = \"https://oidc.example.com\"\nkeys_dir = \"/nonexistent\"\n\
         [[clusters]]\nid = \"prod\"\nalgorithm = \"RS256\"\nmax_token_lifetime = \"24h\"\n\
         jwks_max_age = \"1h\"\npublish_ahead = \"24h\"\naudiences = [\"sts.amazonaws.com\"]\n",
        &Overrides::default(),
    )
    .unwrap();
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/federation.md"))
            .unwrap();
    for provider in Provider::ALL {
        let text = render(
            &config,
            &PrintOptions {
                provider,
                config: None,
                cluster: "prod".into(),
                namespace: "ws-1234".into(),
                service_account: "default".into(),
                audience: None,
                aws_account: Some("111122223333".into()),
            },
        )
        .unwrap();
        assert!(
            guide.contains(&format!("\n{text}```\n")),
            "deploy/federation.md lacks what `federation print {}` writes:\n{text}",
            provider.name()
        );
    }
}
