//! A TokenReview body sent as JSON: decoding must never panic, and the token
//! it carries goes through the cluster's review, which must refuse it (the
//! fuzzer cannot sign with the harness's fresh key) without panicking.
#![no_main]

use k8s_openapi::api::authentication::v1::TokenReview;
use libfuzzer_sys::fuzz_target;
use workload_issuer::http::kube::decode_json;

fuzz_target!(|body: &[u8]| {
    match decode_json::<TokenReview>(body, "authentication.k8s.io/v1", "TokenReview") {
        Ok(r) => {
            let audiences = r.spec.audiences.unwrap_or_default();
            workload_issuer_fuzz::check_foreign_token(&r.spec.token, &audiences);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
