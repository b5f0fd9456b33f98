//! Microbenchmarks of the hot paths: signing per algorithm, JWKS and
//! discovery serialization, claims building and minting, TokenRequest
//! decoding (JSON and protobuf).
//!
//!     cargo bench --bench core

use std::hint::black_box;
use std::sync::Arc;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message as _;
use workload_issuer::config::{Config, Overrides};
use workload_issuer::http::token_request::{decode_json, decode_protobuf};
use workload_issuer::issuer::claims::{
    service_account_uid, subject, Claims, KubernetesClaims, ObjectRef,
};
use workload_issuer::issuer::mint::{mint, MintRequest};
use workload_issuer::issuer::{discovery, Cluster};
use workload_issuer::keys::jwk::jwks_json;
use workload_issuer::keys::material::{KeySpec, SigningKey};
use workload_issuer::keys::store::KeyStore;

/// A 350-byte header.payload, the size of a real signing input.
const MESSAGE: &[u8] = &[b'a'; 350];

fn signing(c: &mut Criterion) {
    for (name, spec) in [
        ("sign RS256 (RSA 2048)", KeySpec::Rsa { bits: 2048 }),
        ("sign ES256 (P-256)", KeySpec::P256),
    ] {
        let (key, _) = SigningKey::generate(spec).unwrap();
        c.bench_function(name, |b| b.iter(|| key.sign(black_box(MESSAGE)).unwrap()));
    }
}

fn documents(c: &mut Criterion) {
    let keys: Vec<SigningKey> = [
        KeySpec::Rsa { bits: 2048 },
        KeySpec::Rsa { bits: 2048 },
        KeySpec::P256,
    ]
    .into_iter()
    .map(|s| SigningKey::generate(s).unwrap().0)
    .collect();
    let jwks: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
    c.bench_function("serialize JWKS (3 keys)", |b| {
        b.iter(|| jwks_json(black_box(&jwks)))
    });
    let algs = [
        workload_issuer::keys::material::Algorithm::Es256,
        workload_issuer::keys::material::Algorithm::Rs256,
    ];
    c.bench_function("serialize discovery", |b| {
        b.iter(|| discovery::document(black_box("https://oidc.example.com/c/demo"), &algs))
    });
}

fn claims(c: &mut Criterion) {
    c.bench_function("build and serialize claims", |b| {
        b.iter(|| {
            let claims = Claims {
                aud: vec!["sts.amazonaws.com".into()],
                exp: 1_800_003_600,
                iat: 1_800_000_000,
                iss: "https://oidc.example.com/c/demo".into(),
                jti: uuid::Uuid::new_v4().to_string(),
                kubernetes: KubernetesClaims {
                    namespace: "ws-1234".into(),
                    node: None,
                    pod: Some(ObjectRef {
                        name: "web-0".into(),
                        uid: "u".into(),
                    }),
                    secret: None,
                    serviceaccount: ObjectRef {
                        name: "default".into(),
                        uid: service_account_uid(
                            "https://oidc.example.com/c/demo",
                            "ws-1234",
                            "default",
                        ),
                    },
                },
                nbf: 1_800_000_000,
                sub: subject("ws-1234", "default"),
            };
            serde_json::to_vec(black_box(&claims)).unwrap()
        })
    });
}

fn minting(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for (name, alg) in [
        ("mint ES256 (claims + sign)", "ES256"),
        ("mint RS256 (claims + sign)", "RS256"),
    ] {
        let text = format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\nkeys_dir = \"k\"\n[[clusters]]\nid = \"demo\"\nalgorithm = \"{alg}\"\n"
        );
        let config = Config::parse("bench", &text, &Overrides::default()).unwrap();
        let settings = config.clusters[0].clone();
        let store = KeyStore::new(dir.path().join(alg));
        let (keys, _) = store
            .load_or_create("demo", settings.key_spec, SystemTime::now())
            .unwrap();
        let cluster = Cluster::new(settings, Arc::new(keys));
        let request = MintRequest {
            namespace: "ws-1234".into(),
            name: "default".into(),
            audiences: vec!["sts.amazonaws.com".into()],
            expiration_seconds: Some(3600),
            bound: None,
        };
        c.bench_function(name, |b| {
            b.iter(|| mint(&cluster, black_box(&request), SystemTime::now()).unwrap())
        });
    }
}

fn decoding(c: &mut Criterion) {
    let json = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["sts.amazonaws.com"],"expirationSeconds":3600,"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web-0","uid":"8d3c"}}}"#;
    c.bench_function("decode TokenRequest JSON", |b| {
        b.iter(|| decode_json(black_box(json)).unwrap())
    });
    use k8s_pb::api::authentication::v1 as pb;
    let raw = pb::TokenRequest {
        metadata: Some(Default::default()),
        spec: Some(pb::TokenRequestSpec {
            audiences: vec!["sts.amazonaws.com".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        status: Some(Default::default()),
    }
    .encode_to_vec();
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some("authentication.k8s.io/v1".into()),
            kind: Some("TokenRequest".into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    c.bench_function("decode TokenRequest protobuf", |b| {
        b.iter(|| decode_protobuf(black_box(&body)).unwrap())
    });
}

criterion_group!(benches, signing, documents, claims, minting, decoding);
criterion_main!(benches);
