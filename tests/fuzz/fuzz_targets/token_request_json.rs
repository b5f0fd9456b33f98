//! A TokenRequest body sent as JSON (what API clients and `kubectl create
//! token` without protobuf send): decoding must never panic, and what decodes
//! is checked through minting and review.
#![no_main]

use k8s_openapi::api::authentication::v1 as authv1;
use libfuzzer_sys::fuzz_target;
use workload_issuer::http::token_request::{decode_json, API_VERSION, KIND};

fuzz_target!(|body: &[u8]| {
    let decoded = match decode_json(body) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    // decode_json is serde_json plus checks: the same body decodes plainly,
    // to the same spec, and a type field it names is the TokenRequest's own.
    let plain: authv1::TokenRequest =
        serde_json::from_slice(body).expect("decode_json accepted what serde_json refuses");
    let spec = plain.spec.unwrap_or_default();
    assert!(
        spec.attestations.is_none_or(|a| a.is_empty()),
        "attestations were accepted"
    );
    assert_eq!(spec.audiences.unwrap_or_default(), decoded.audiences);
    assert_eq!(spec.expiration_seconds, decoded.expiration_seconds);
    assert_eq!(plain.metadata.name, decoded.metadata_name);
    assert_eq!(plain.metadata.namespace, decoded.metadata_namespace);
    // (serde_json skips the fields it ignores without checking their UTF-8,
    // so an accepted body need not be a valid `Value`.)
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(v) = value.get("apiVersion").and_then(|v| v.as_str()) {
            assert_eq!(v, API_VERSION, "a wrong apiVersion was accepted");
        }
        if let Some(k) = value.get("kind").and_then(|k| k.as_str()) {
            assert_eq!(k, KIND, "a wrong kind was accepted");
        }
    }
    workload_issuer_fuzz::check_decoded(decoded);
});
