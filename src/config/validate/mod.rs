//! Validation: the merged file schema becomes a [`Config`], or a list of
//! every problem found, each naming its field and saying how to fix it.
//!
//! The top level, listeners, limits and rotation here; clusters and their
//! rotation policies in `cluster`, API clients in `clients`, the store in
//! `store`. Imports the `k8s` name rules and the key kinds of
//! `config::keyspec`; never `issuer`, `http`, `server`, `serve`, `client`.

mod clients;
mod cluster;
mod store;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use self::clients::validate_client;
use self::cluster::check_url;
pub(super) use self::cluster::validate_cluster;
use self::store::validate_store;
use super::model::{
    ClusterConfig, Config, Credential, Limits, ListenerConfig, RotationSettings, TlsFiles,
};
use super::schema::{FileApi, FileConfig, FileLimits, FileRotation};

pub(super) fn validate(file: FileConfig, problems: &mut Vec<String>) -> Option<Config> {
    let listen = match file.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(format!(
                "listen: \"{}\" is not an address and port such as 127.0.0.1:8080 or [::]:443",
                file.listen
            ));
            None
        }
    };
    let public_url = match check_url(&file.public_url) {
        Ok(_) => Some(file.public_url.clone()),
        Err(why) => {
            problems.push(format!("public_url: \"{}\" {why}", file.public_url));
            None
        }
    };
    if file.keys_dir.as_os_str().is_empty() {
        problems.push("keys_dir: must not be empty".into());
    }
    let store = validate_store(file.store, problems);
    let tls = tls_pair("", file.tls_cert, file.tls_key, problems);
    let (api_listener, tls) = validate_api(file.api, listen, tls, problems);
    let api_tls = match &api_listener {
        Some(l) => l.tls.as_ref(),
        None => tls.as_ref(),
    };
    let client_ca = api_tls.is_some_and(|t| t.client_ca.is_some());

    let mut clusters = Vec::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut paths: HashMap<String, usize> = HashMap::new();
    let mut sockets: HashMap<PathBuf, usize> = HashMap::new();
    for (i, c) in file.clusters.into_iter().enumerate() {
        let at = format!("clusters[{i}]");
        if let Some(first) = ids.get(&c.id) {
            problems.push(format!(
                "{at}.id: duplicate cluster id \"{}\" (also clusters[{first}])",
                c.id
            ));
        } else {
            ids.insert(c.id.clone(), i);
        }
        if let Some(cluster) = validate_cluster(&at, c, public_url.as_deref(), problems) {
            if let Some(first) = paths.get(&cluster.issuer_path) {
                problems.push(format!(
                    "{at}.issuer: \"{}\" has the same path as clusters[{first}]; \
                     each issuer needs its own path, since requests are routed by it",
                    cluster.issuer
                ));
            } else {
                paths.insert(cluster.issuer_path.clone(), i);
            }
            if let Some(s) = &cluster.kubernetes_signer {
                if let Some(first) = sockets.insert(s.path.clone(), i) {
                    problems.push(format!(
                        "{at}.kubernetes_signer_socket: \"{}\" is also clusters[{first}]'s; \
                         each cluster's signer needs its own socket",
                        s.path.display()
                    ));
                }
            }
            clusters.push(cluster);
        }
    }

    let mut api_clients = Vec::new();
    let mut names = HashSet::new();
    // One token, one client: with two, whichever is checked last would
    // decide the scope, and nothing in the config would say so.
    let mut digests: HashMap<[u8; 32], String> = HashMap::new();
    let mut token_files: HashMap<PathBuf, String> = HashMap::new();
    for (i, a) in file.api_clients.into_iter().enumerate() {
        let at = format!("api_clients[{i}]");
        if !names.insert(a.name.clone()) {
            problems.push(format!(
                "{at}.name: duplicate API client name \"{}\"",
                a.name
            ));
        }
        let Some(client) = validate_client(&at, a, &ids, client_ca, problems) else {
            continue;
        };
        let name = &client.name;
        match &client.credential {
            Some(Credential::Sha256(d)) => {
                if let Some(first) = digests.insert(*d, name.clone()) {
                    problems.push(format!(
                        "{at}.token_sha256: the same token is given to both \"{first}\" and \
                         \"{name}\"; a token must identify one client, give each its own"
                    ));
                }
            }
            // Compared as paths, so "./a.token" is "a.token". Two paths to one
            // file (a link) are not seen here; the start refuses that too,
            // once the files are read.
            Some(Credential::File { path, .. }) => {
                if let Some(first) = token_files.insert(file.keys_dir.join(path), name.clone()) {
                    problems.push(format!(
                        "{at}.token_file: \"{}\" is the token file of both \"{first}\" and \
                         \"{name}\"; a token must identify one client, give each its own file",
                        path.display()
                    ));
                }
            }
            None => {}
        }
        api_clients.push(client);
    }

    let mut seen_names: HashMap<&str, &str> = HashMap::new();
    for c in &api_clients {
        for n in &c.certificate_names {
            if let Some(first) = seen_names.insert(n, &c.name) {
                problems.push(format!(
                    "api_clients: certificate name \"{n}\" is given to both \"{first}\" and \"{}\"; \
                     a certificate must identify one client",
                    c.name
                ));
            }
        }
    }

    if let Some(listen) = listen {
        check_exposure(
            listen,
            api_listener.as_ref(),
            tls.is_some(),
            &clusters,
            file.allow_insecure_http,
            problems,
        );
    }

    let rotation = validate_rotation(file.rotation, problems);
    let limits = validate_limits(file.limits, problems);
    let tls_reload_interval = duration(
        "",
        "tls_reload_interval",
        file.tls_reload_interval.as_deref(),
        "10s",
        problems,
    );
    if tls_reload_interval.is_some_and(|d| d < Duration::from_secs(1)) {
        problems.push("tls_reload_interval: must be at least 1s".into());
    }

    Some(Config {
        rotation: rotation?,
        listen: listen?,
        public_url: public_url?,
        keys_dir: file.keys_dir,
        store: store?,
        tls,
        api_listener,
        clusters,
        api_clients,
        limits: limits?,
        tls_reload_interval: tls_reload_interval?,
        allow_insecure_key_permissions: file.allow_insecure_key_permissions,
        file: None,
        overrides: Default::default(),
    })
}

/// A certificate and key given together, or neither. `at` prefixes the
/// field names ("" or "api.").
fn tls_pair(
    at: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: None,
        }),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(format!("{at}tls_key: required when {at}tls_cert is set"));
            None
        }
        (None, Some(_)) => {
            problems.push(format!("{at}tls_cert: required when {at}tls_key is set"));
            None
        }
    }
}

/// The `[api]` table: where the issuance API listens and with what TLS.
/// Returns the API's own listener, if any, and the main listener's TLS (which
/// takes the client CA when the API shares the main listener).
fn validate_api(
    api: FileApi,
    listen: Option<SocketAddr>,
    mut tls: Option<TlsFiles>,
    problems: &mut Vec<String>,
) -> (Option<ListenerConfig>, Option<TlsFiles>) {
    let own_tls = tls_pair("api.", api.tls_cert, api.tls_key, problems);
    let Some(text) = api.listen else {
        if own_tls.is_some() {
            problems.push(
                "api.tls_cert and api.tls_key: only apply with api.listen; without it the API \
                 is served on the main listener with tls_cert and tls_key"
                    .into(),
            );
        }
        if let Some(ca) = api.client_ca {
            match tls.as_mut() {
                Some(t) => t.client_ca = Some(ca),
                None => problems.push(
                    "api.client_ca: client certificates need TLS; set tls_cert and tls_key".into(),
                ),
            }
        }
        return (None, tls);
    };
    let Ok(addr) = text.parse::<SocketAddr>() else {
        problems.push(format!(
            "api.listen: \"{text}\" is not an address and port such as 10.0.0.5:9443 or [::]:9443"
        ));
        return (None, tls);
    };
    if listen.is_some_and(|l| {
        l.port() == addr.port()
            && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
    }) {
        problems.push(format!(
            "api.listen: {addr} overlaps listen; the issuance API needs an address of its own"
        ));
    }
    let mut own = own_tls.or_else(|| tls.clone());
    if let Some(ca) = api.client_ca {
        match own.as_mut() {
            Some(t) => t.client_ca = Some(ca),
            None => problems.push(
                "api.client_ca: client certificates need TLS on the API listener; set \
                 api.tls_cert and api.tls_key (or tls_cert and tls_key)"
                    .into(),
            ),
        }
    }
    (Some(ListenerConfig { addr, tls: own }), tls)
}

/// Refuses what cloud IAM providers and API clients must not be exposed to:
/// an http issuer served on a non-loopback address (providers require https
/// issuers), and the issuance API on a non-loopback address without TLS
/// (bearer tokens and minted tokens in clear text). `allow_insecure_http`
/// permits both, for TLS terminated in front of the server.
fn check_exposure(
    listen: SocketAddr,
    api: Option<&ListenerConfig>,
    main_tls: bool,
    clusters: &[ClusterConfig],
    allow: bool,
    problems: &mut Vec<String>,
) {
    if allow {
        return;
    }
    let fix = "set allow_insecure_http = true if TLS is terminated in front of the server";
    if !listen.ip().is_loopback() {
        if let Some(c) = clusters.iter().find(|c| c.issuer.starts_with("http://")) {
            problems.push(format!(
                "clusters: issuer \"{}\" is http while listen {listen} is not a loopback \
                 address; cloud IAM providers only accept https issuers (use an https \
                 public_url or issuer, or {fix})",
                c.issuer
            ));
        }
    }
    let (api_addr, api_tls, field) = match api {
        Some(l) => (l.addr, l.tls.is_some(), "api.listen"),
        None => (listen, main_tls, "listen"),
    };
    if !api_addr.ip().is_loopback() && !api_tls {
        problems.push(format!(
            "{field}: the issuance API would listen on {api_addr} without TLS, sending bearer \
             tokens and minted tokens in clear text; set tls_cert and tls_key, move the API to \
             a loopback api.listen, or {fix}"
        ));
    }
}

fn validate_limits(l: FileLimits, problems: &mut Vec<String>) -> Option<Limits> {
    let d = Limits::default();
    let before = problems.len();
    let max_connections = l.max_connections.map_or(d.max_connections, |n| n as usize);
    if !(1..=1_000_000).contains(&max_connections) {
        problems.push(format!(
            "limits.max_connections: {max_connections} must be between 1 and 1000000"
        ));
    }
    let max_header_bytes = l
        .max_header_bytes
        .map_or(d.max_header_bytes, |n| n as usize);
    if !(8192..=1024 * 1024).contains(&max_header_bytes) {
        problems.push(format!(
            "limits.max_header_bytes: {max_header_bytes} must be between 8192 and 1048576"
        ));
    }
    let header_read_timeout = duration(
        "limits",
        "header_read_timeout",
        l.header_read_timeout.as_deref(),
        "10s",
        problems,
    );
    let request_timeout = duration(
        "limits",
        "request_timeout",
        l.request_timeout.as_deref(),
        "30s",
        problems,
    );
    for (field, value) in [
        ("header_read_timeout", header_read_timeout),
        ("request_timeout", request_timeout),
    ] {
        if value.is_some_and(|v| v < Duration::from_secs(1) || v > Duration::from_secs(3600)) {
            problems.push(format!("limits.{field}: must be between 1s and 1h"));
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(Limits {
        max_connections,
        max_header_bytes,
        header_read_timeout: header_read_timeout?,
        request_timeout: request_timeout?,
    })
}

fn validate_rotation(r: FileRotation, problems: &mut Vec<String>) -> Option<RotationSettings> {
    let interval = duration(
        "rotation",
        "interval",
        r.interval.as_deref(),
        "1m",
        problems,
    );
    let reload = duration(
        "rotation",
        "reload_interval",
        r.reload_interval.as_deref(),
        "5s",
        problems,
    );
    let (interval, reload) = (interval?, reload?);
    if interval < Duration::from_secs(1) || reload < Duration::from_secs(1) {
        problems.push("rotation.interval and rotation.reload_interval: must be at least 1s".into());
        return None;
    }
    Some(RotationSettings {
        enabled: r.enabled.unwrap_or(true),
        interval,
        reload_interval: reload,
    })
}

pub(super) fn duration(
    at: &str,
    field: &str,
    value: Option<&str>,
    default: &str,
    problems: &mut Vec<String>,
) -> Option<Duration> {
    let text = value.unwrap_or(default);
    let at = if at.is_empty() {
        String::new()
    } else {
        format!("{at}.")
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.subsec_nanos() == 0 => Some(d),
        Ok(_) => {
            problems.push(format!(
                "{at}{field}: \"{text}\" must be a whole number of seconds"
            ));
            None
        }
        Err(e) => {
            problems.push(format!(
                "{at}{field}: \"{text}\" is not a duration ({e}); write it like \"24h\", \"90m\" or \"3600s\""
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::testing::{parse, problems_of, BASE, CLUSTER};
    use crate::config::{Limits, RateLimit};

    #[test]
    fn every_problem_names_its_field() {
        let text = format!(
            r#"{BASE}
[[clusters]]
id = "demo"
rsa_bits = 1024

[[clusters]]
id = "demo"
issuer = "https://oidc.example.com/x/"

[[clusters]]
id = "Bad_Id"
issuer = "https://oidc.example.com/y?q=1"
algorithm = "HS256"

[[clusters]]
id = "frag"
issuer = "https://oidc.example.com/z#f"
max_token_lifetime = "5m"
jwks_max_age = "soon"

[[api_clients]]
name = "x"
token_sha256 = "abc"
clusters = ["nope"]
"#
        );
        let err = parse(&text).unwrap_err().to_string();
        for needle in [
            "clusters[0].rsa_bits: 1024",
            "clusters[1].id: duplicate cluster id \"demo\"",
            "clusters[1].issuer: \"https://oidc.example.com/x/\" must not end with '/'",
            "clusters[2].id: \"Bad_Id\" must be a DNS label",
            "clusters[2].issuer: \"https://oidc.example.com/y?q=1\" must not have a query",
            "clusters[2].algorithm: \"HS256\" is not supported",
            "clusters[3].issuer: \"https://oidc.example.com/z#f\" must not have a fragment",
            "clusters[3].max_token_lifetime: 5m is shorter than min_token_lifetime 10m",
            "clusters[3].jwks_max_age: \"soon\" is not a duration",
            "api_clients[0].token_sha256: must be 64 hex digits",
            "api_clients[0].clusters[0]: no cluster has id \"nope\"",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn an_http_issuer_or_a_clear_text_api_off_loopback_is_refused_unless_allowed() {
        let open_http = "listen = \"0.0.0.0:8080\"\npublic_url = \"http://oidc.example.com\"\nkeys_dir = \"k\"\n";
        let p = problems_of(&format!("{open_http}{CLUSTER}"));
        assert!(
            p.iter()
                .any(|m| m.contains("cloud IAM providers only accept https issuers")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m
                .starts_with("listen: the issuance API would listen on 0.0.0.0:8080 without TLS")),
            "{p:?}"
        );
        assert!(parse(&format!("allow_insecure_http = true\n{open_http}{CLUSTER}")).is_ok());
        // https behind a terminating proxy, the API kept on loopback: fine.
        let proxied = "listen = \"0.0.0.0:8080\"\npublic_url = \"https://oidc.example.com\"\nkeys_dir = \"k\"\n";
        assert!(problems_of(&format!("{proxied}{CLUSTER}"))
            .iter()
            .any(|m| m.contains("issuance API")));
        let c = parse(&format!(
            "{proxied}{CLUSTER}[api]\nlisten = \"127.0.0.1:9443\"\n"
        ))
        .unwrap();
        assert_eq!(c.api_listener.unwrap().addr.to_string(), "127.0.0.1:9443");
        // Loopback development over http stays allowed.
        assert!(parse(&format!("{BASE}{CLUSTER}")).is_ok());
    }

    #[test]
    fn the_api_listener_and_client_certificates_are_checked() {
        let tls = "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
        let c = parse(&format!("{tls}{BASE}{CLUSTER}[api]\nlisten = \"127.0.0.1:9443\"\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"ci\"\ncertificate_names = [\"ci.internal\"]\nclusters = [\"*\"]\n")).unwrap();
        let api = c.api_listener.unwrap();
        let api_tls = api.tls.unwrap();
        assert_eq!(api_tls.cert, PathBuf::from("c.pem"));
        assert_eq!(api_tls.client_ca, Some(PathBuf::from("ca.pem")));
        // The public listener does not ask for client certificates.
        assert!(c.tls.unwrap().client_ca.is_none());
        assert!(c.api_clients[0].credential.is_none());
        // Common names count only when a client asks for them.
        assert!(!c.api_clients[0].allow_common_name);
        let p = problems_of(&format!(
            "{BASE}{CLUSTER}[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nallow_common_name = true\nclusters = [\"*\"]\n",
            "0".repeat(64)
        ));
        assert_eq!(
            p,
            ["api_clients[0].allow_common_name: only applies with certificate_names"]
        );

        let p = problems_of(&format!("{BASE}{CLUSTER}[api]\nlisten = \"127.0.0.1:8080\"\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"ci\"\ncertificate_names = [\"ci.internal\"]\nclusters = [\"*\"]\n"));
        assert!(
            p.iter()
                .any(|m| m.starts_with("api.listen: 127.0.0.1:8080 overlaps listen")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("api.client_ca: client certificates need TLS")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains(
                "certificate_names: client certificates are only accepted with api.client_ca"
            )),
            "{p:?}"
        );
        let p = problems_of(&format!(
            "{BASE}{CLUSTER}[[api_clients]]\nname = \"a\"\nclusters = [\"*\"]\n"
        ));
        assert!(
            p.iter()
                .any(|m| m
                    .contains("set token_sha256 (a digest) or token_file, or certificate_names")),
            "{p:?}"
        );
        let p = problems_of(&format!("{tls}{BASE}{CLUSTER}[api]\nclient_ca = \"ca.pem\"\n[[api_clients]]\nname = \"a\"\ncertificate_names = [\"x\"]\nclusters = [\"*\"]\n[[api_clients]]\nname = \"b\"\ncertificate_names = [\"x\"]\nclusters = [\"*\"]\n"));
        assert!(
            p.iter()
                .any(|m| m.contains("certificate name \"x\" is given to both \"a\" and \"b\"")),
            "{p:?}"
        );
    }

    #[test]
    fn limits_and_rate_limits_are_parsed_and_bounded() {
        let c = parse(&format!("{BASE}{CLUSTER}")).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.tls_reload_interval, Duration::from_secs(10));
        let c = parse(&format!("{BASE}{CLUSTER}[limits]\nmax_connections = 64\nheader_read_timeout = \"2s\"\n[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nrate_limit = \"30/m\"\n", "0".repeat(64))).unwrap();
        assert_eq!(c.limits.max_connections, 64);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(
            c.api_clients[0].rate_limit,
            Some(RateLimit {
                per_second: 0.5,
                burst: 30
            })
        );
        let p = problems_of(&format!("{BASE}tls_reload_interval = \"0s\"\n{CLUSTER}[limits]\nmax_connections = 0\nmax_header_bytes = 100\nrequest_timeout = \"2h\"\n[[api_clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nrate_limit = \"fast\"\n[[api_clients]]\nname = \"b\"\ntoken_sha256 = \"{}\"\nclusters = [\"*\"]\nburst = 3\n", "0".repeat(64), "1".repeat(64)));
        for expected in [
            "limits.max_connections: 0 must be between 1 and 1000000",
            "limits.max_header_bytes: 100 must be between 8192 and 1048576",
            "limits.request_timeout: must be between 1s and 1h",
            "api_clients[0].rate_limit: \"fast\" is not a rate",
            "api_clients[1].burst: only applies with rate_limit",
            "tls_reload_interval: must be at least 1s",
        ] {
            assert!(
                p.iter().any(|m| m.starts_with(expected)),
                "{expected} not in {p:?}"
            );
        }
    }
}
