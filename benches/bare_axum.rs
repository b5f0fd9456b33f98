//! The framework's floor for benches/load.sh: a bare axum handler returning
//! a file's bytes from memory, with the same headers workload-issuer sends
//! for its JWKS. Not a benchmark of its own:
//!
//!     bare_axum --serve 127.0.0.1:PORT FILE

use axum::http::header;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(file)) = (
        args.iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 1)),
        args.iter()
            .position(|a| a == "--serve")
            .and_then(|i| args.get(i + 2)),
    ) else {
        println!("bare_axum: the comparison server of benches/load.sh (bare_axum --serve ADDR FILE); nothing to run here");
        return;
    };
    let body = Bytes::from(std::fs::read(file).expect("the file to serve"));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let app = Router::new().fallback(get(move || {
            let body = body.clone();
            async move {
                (
                    [
                        (header::CONTENT_TYPE, "application/jwk-set+json"),
                        (header::CACHE_CONTROL, "public, max-age=3600"),
                        (header::ETAG, "\"0123456789abcdefghijkl\""),
                        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    ],
                    body,
                )
            }
        }));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        eprintln!(
            "listening on http://{}",
            listener.local_addr().expect("address")
        );
        axum::serve(listener, app).await.expect("serve");
    });
}
