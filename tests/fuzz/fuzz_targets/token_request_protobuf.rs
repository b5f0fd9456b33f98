//! A TokenRequest body sent as Kubernetes protobuf (the `k8s\0` prefix and a
//! `runtime.Unknown` envelope, as kubectl sends it): decoding must never
//! panic, and what decodes is checked through minting and review.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workload_issuer::http::token_request::decode_protobuf;

fuzz_target!(|body: &[u8]| {
    let decoded = match decode_protobuf(body) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if !body.starts_with(b"k8s\0") {
                assert!(
                    matches!(e, workload_issuer::http::kube::DecodeError::NoEnvelope),
                    "{e}"
                );
            }
            return;
        }
    };
    assert!(
        body.starts_with(b"k8s\0"),
        "decoded without the envelope prefix"
    );
    // Protobuf has no null: empty strings stand for absent ones, and the
    // decoder maps them to None.
    assert_ne!(decoded.metadata_name.as_deref(), Some(""));
    assert_ne!(decoded.metadata_namespace.as_deref(), Some(""));
    if let Some(b) = &decoded.bound {
        assert_ne!(b.api_version.as_deref(), Some(""));
    }
    workload_issuer_fuzz::check_decoded(decoded);
});
