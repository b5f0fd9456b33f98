//! The `[store]` table: the keys dir (`kind = "dir"`, the default) or etcd,
//! with its endpoints, prefix, key-encryption key, TLS, authentication and
//! election lease. Every problem names its field as `store.<field>`.
//!
//! Imports nothing of the crate above `config`; connecting to etcd and
//! reading the files named here is the store's business, not this one's.

use std::path::PathBuf;
use std::time::Duration;

use super::duration;
use crate::config::model::{
    EtcdStoreConfig, EtcdTls, StoreConfig, DEFAULT_ETCD_PREFIX, DEFAULT_LEASE_TTL,
};
use crate::config::schema::FileStore;

/// The bounds of `lease_ttl`: under 2s a busy replica's keep-alive could
/// miss its lease; over 60s a dead holder blocks rotation for too long.
const LEASE_TTL: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));

pub(super) fn validate_store(s: FileStore, problems: &mut Vec<String>) -> Option<StoreConfig> {
    match s.kind.as_deref() {
        None | Some("dir") => {
            for field in etcd_fields_set(&s) {
                problems.push(format!(
                    "store.{field}: applies only to kind = \"etcd\"; this store is kind = \"dir\" \
                     (the keys dir)"
                ));
            }
            Some(StoreConfig::Dir)
        }
        Some("etcd") => validate_etcd(s, problems).map(StoreConfig::Etcd),
        Some(other) => {
            problems.push(format!(
                "store.kind: \"{other}\" is not a store kind; use \"dir\" (the keys dir, the \
                 default) or \"etcd\""
            ));
            None
        }
    }
}

/// The etcd fields a `[store]` table sets, by name.
fn etcd_fields_set(s: &FileStore) -> Vec<&'static str> {
    [
        ("endpoints", s.endpoints.is_some()),
        ("prefix", s.prefix.is_some()),
        ("kek_file", s.kek_file.is_some()),
        ("extra_kek_files", s.extra_kek_files.is_some()),
        ("ca_file", s.ca_file.is_some()),
        ("cert_file", s.cert_file.is_some()),
        ("key_file", s.key_file.is_some()),
        ("username", s.username.is_some()),
        ("password_file", s.password_file.is_some()),
        ("lease_ttl", s.lease_ttl.is_some()),
        ("cache_dir", s.cache_dir.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect()
}

fn validate_etcd(s: FileStore, problems: &mut Vec<String>) -> Option<EtcdStoreConfig> {
    let before = problems.len();
    let endpoints = s.endpoints.unwrap_or_default();
    if endpoints.is_empty() {
        problems.push(
            "store.endpoints: required with kind = \"etcd\": the etcd members' client URLs, \
             such as [\"https://etcd-0.internal:2379\"]"
                .into(),
        );
    }
    let mut https = None;
    for (i, endpoint) in endpoints.iter().enumerate() {
        if let Some(first) = endpoints[..i].iter().position(|e| e == endpoint) {
            problems.push(format!(
                "store.endpoints[{i}]: \"{endpoint}\" is listed twice (also \
                 store.endpoints[{first}])"
            ));
            continue;
        }
        match check_endpoint(endpoint) {
            Ok(secure) => match https {
                None => https = Some((secure, i)),
                Some((first, at)) if first != secure => problems.push(format!(
                    "store.endpoints[{i}]: \"{endpoint}\" is {} while store.endpoints[{at}] is \
                     {}; reach every member the same way",
                    scheme(secure),
                    scheme(first)
                )),
                Some(_) => {}
            },
            Err(why) => problems.push(format!("store.endpoints[{i}]: \"{endpoint}\" {why}")),
        }
    }

    let kek_file = match s.kek_file {
        Some(p) => path("kek_file", p, problems),
        None => {
            problems.push(
                "store.kek_file: required with kind = \"etcd\": the key-encryption key private \
                 keys are sealed under (32 random bytes; create one with `workload-issuer store \
                 new-kek FILE`)"
                    .into(),
            );
            None
        }
    };
    let mut extra_kek_files = Vec::new();
    for (i, p) in s
        .extra_kek_files
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let field = format!("extra_kek_files[{i}]");
        if p.as_os_str().is_empty() {
            problems.push(format!("store.{field}: must not be empty"));
        } else if Some(&p) == kek_file.as_ref() {
            problems.push(format!(
                "store.{field}: is kek_file itself; list only the other key-encryption keys"
            ));
        } else {
            extra_kek_files.push(p);
        }
    }
    let prefix = s.prefix.unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_owned());
    if let Err(why) = check_prefix(&prefix) {
        problems.push(format!("store.prefix: \"{prefix}\" {why}"));
    }

    let ca_file = s.ca_file.and_then(|p| path("ca_file", p, problems));
    let cert_file = s.cert_file.and_then(|p| path("cert_file", p, problems));
    let key_file = s.key_file.and_then(|p| path("key_file", p, problems));
    pair("cert_file", &cert_file, "key_file", &key_file, problems);
    let tls = match https {
        Some((true, _)) => Some(EtcdTls {
            ca_file,
            cert_file,
            key_file,
        }),
        Some((false, at)) => {
            for (field, set) in [
                ("ca_file", ca_file.is_some()),
                ("cert_file", cert_file.is_some()),
                ("key_file", key_file.is_some()),
            ] {
                if set {
                    problems.push(format!(
                        "store.{field}: TLS needs https:// endpoints, and store.endpoints[{at}] \
                         \"{}\" is http://; use https:// URLs or leave store.{field} out",
                        endpoints[at]
                    ));
                }
            }
            None
        }
        // No endpoint is good: said above.
        None => None,
    };

    let username = s.username;
    if username.as_deref().is_some_and(str::is_empty) {
        problems.push("store.username: must not be empty".into());
    }
    let password_file = s
        .password_file
        .and_then(|p| path("password_file", p, problems));
    pair(
        "username",
        &username,
        "password_file",
        &password_file,
        problems,
    );
    let cache_dir = s.cache_dir.and_then(|p| path("cache_dir", p, problems));

    let lease_ttl = duration(
        "store",
        "lease_ttl",
        s.lease_ttl.as_deref(),
        &humantime::format_duration(DEFAULT_LEASE_TTL).to_string(),
        problems,
    );
    if let Some(ttl) = lease_ttl.filter(|t| !(LEASE_TTL.0..=LEASE_TTL.1).contains(t)) {
        problems.push(format!(
            "store.lease_ttl: {} must be between {} and {}",
            humantime::format_duration(ttl),
            humantime::format_duration(LEASE_TTL.0),
            humantime::format_duration(LEASE_TTL.1)
        ));
    }

    if problems.len() != before {
        return None;
    }
    Some(EtcdStoreConfig {
        endpoints,
        prefix,
        kek_file: kek_file?,
        extra_kek_files,
        tls,
        username,
        password_file,
        lease_ttl: lease_ttl?,
        cache_dir,
    })
}

fn scheme(https: bool) -> &'static str {
    if https {
        "https://"
    } else {
        "http://"
    }
}

/// A path field, refused when empty.
fn path(field: &str, p: PathBuf, problems: &mut Vec<String>) -> Option<PathBuf> {
    if p.as_os_str().is_empty() {
        problems.push(format!("store.{field}: must not be empty"));
        return None;
    }
    Some(p)
}

/// Two fields set together or not at all.
fn pair<A, B>(a: &str, va: &Option<A>, b: &str, vb: &Option<B>, problems: &mut Vec<String>) {
    match (va.is_some(), vb.is_some()) {
        (true, false) => problems.push(format!("store.{b}: required when store.{a} is set")),
        (false, true) => problems.push(format!("store.{a}: required when store.{b} is set")),
        _ => {}
    }
}

/// An etcd member's client URL: `http://` or `https://`, a host and an
/// explicit port, nothing else. Returns whether it is `https://`.
fn check_endpoint(text: &str) -> Result<bool, String> {
    let shape = "write it as https://host:port or http://host:port";
    if text.is_empty() {
        return Err(format!("is empty; {shape}"));
    }
    // "etcd-0:2379" parses as a URL of the scheme "etcd-0": say what is
    // missing instead.
    if !text.contains("://") {
        return Err(format!("has no scheme; {shape}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL ({e}); {shape}"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(format!("has the scheme \"{other}\"; {shape}")),
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("has no host; {shape}"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain user information; set store.username and store.password_file".into(),
        );
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a path, query or fragment; {shape}"));
    }
    // `Url::port` hides a scheme's default port (https://h:443 has none), so
    // the port is read from the text: etcd has no default port to fall back
    // on, and the port must be written.
    let authority = text.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
        .map(|(_, port)| port)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match port.and_then(|p| p.parse::<u16>().ok()) {
        Some(0) => Err(format!("has port 0; {shape}")),
        Some(_) => Ok(https),
        None => Err(format!(
            "has no port; etcd has no default port, so write the members' client port \
             (2379 unless changed): {shape}"
        )),
    }
}

/// Every key of this issuer sits under `prefix`, and the store appends
/// `/clusters/<id>` and the like to it.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if !prefix.starts_with('/') {
        return Err("must start with '/'");
    }
    if prefix == "/" {
        return Err(
            "would be the whole keyspace; give this issuer a prefix of its own, such as \
             \"/workload-issuer\"",
        );
    }
    if prefix.ends_with('/') {
        return Err("must not end with '/'");
    }
    if prefix.contains("//") {
        return Err("must not contain \"//\"");
    }
    if !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may hold only printable ASCII without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::testing::{parse, problems_of, BASE, CLUSTER};
    use crate::config::{
        Config, EtcdStoreConfig, EtcdTls, Overrides, StoreConfig, DEFAULT_ETCD_PREFIX,
    };

    /// A config whose `[store]` table holds `store`.
    fn with_store(store: &str) -> String {
        format!("{BASE}{CLUSTER}[store]\n{store}")
    }

    const ETCD: &str = "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n\
                        kek_file = \"kek\"\n";

    fn etcd(store: &str) -> EtcdStoreConfig {
        match parse(&with_store(store)).unwrap().store {
            StoreConfig::Etcd(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_store_is_the_keys_dir_unless_told_otherwise() {
        let c = Config::load_with_env(
            None,
            std::iter::empty::<(String, String)>(),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.store, StoreConfig::Dir, "the embedded default");
        assert_eq!(
            parse(&format!("{BASE}{CLUSTER}")).unwrap().store,
            StoreConfig::Dir
        );
        assert_eq!(
            parse(&with_store("kind = \"dir\"\n")).unwrap().store,
            StoreConfig::Dir
        );
    }

    #[test]
    fn an_etcd_store_needs_only_endpoints_and_a_kek_file() {
        assert_eq!(
            etcd(ETCD),
            EtcdStoreConfig {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: DEFAULT_ETCD_PREFIX.into(),
                // As written, like keys_dir: from the working directory.
                kek_file: PathBuf::from("kek"),
                extra_kek_files: Vec::new(),
                tls: None,
                username: None,
                password_file: None,
                lease_ttl: Duration::from_secs(10),
                cache_dir: None,
            }
        );
    }

    #[test]
    fn extra_keks_open_while_the_kek_is_replaced_and_kek_file_is_not_one_of_them() {
        let e = etcd(&format!("{ETCD}extra_kek_files = [\"old-kek\"]\n"));
        assert_eq!(e.extra_kek_files, vec![PathBuf::from("old-kek")]);
        let problems = parse(&with_store(&format!(
            "{ETCD}extra_kek_files = [\"kek\", \"\"]\n"
        )))
        .unwrap_err()
        .to_string();
        assert!(
            problems.contains("store.extra_kek_files[0]: is kek_file itself")
                && problems.contains("store.extra_kek_files[1]: must not be empty"),
            "{problems}"
        );
    }

    #[test]
    fn an_etcd_store_with_every_field_is_read_whole() {
        let e = etcd(
            "kind = \"etcd\"\n\
             endpoints = [\"https://etcd-0.internal:2379\", \"https://[fd00::1]:2379\", \
             \"https://etcd-2.internal:443/\"]\n\
             prefix = \"/platform/issuer-1\"\n\
             kek_file = \"/etc/workload-issuer/kek\"\n\
             ca_file = \"etcd-ca.pem\"\n\
             cert_file = \"etcd-client.pem\"\n\
             key_file = \"etcd-client.key\"\n\
             username = \"issuer\"\n\
             password_file = \"/run/secrets/etcd-password\"\n\
             lease_ttl = \"1m\"\n\
             cache_dir = \"/var/cache/workload-issuer\"\n",
        );
        assert_eq!(e.endpoints.len(), 3);
        assert_eq!(e.prefix, "/platform/issuer-1");
        assert_eq!(e.kek_file, PathBuf::from("/etc/workload-issuer/kek"));
        assert_eq!(
            e.tls,
            Some(EtcdTls {
                ca_file: Some("etcd-ca.pem".into()),
                cert_file: Some("etcd-client.pem".into()),
                key_file: Some("etcd-client.key".into()),
            })
        );
        assert_eq!(e.username.as_deref(), Some("issuer"));
        assert_eq!(
            e.password_file,
            Some(PathBuf::from("/run/secrets/etcd-password"))
        );
        assert_eq!(e.lease_ttl, Duration::from_secs(60));
        assert_eq!(
            e.cache_dir,
            Some(PathBuf::from("/var/cache/workload-issuer"))
        );
    }

    #[test]
    fn https_endpoints_without_a_ca_file_verify_against_the_system_roots() {
        let e = etcd(
            "kind = \"etcd\"\nendpoints = [\"https://etcd.example.com:2379\"]\nkek_file = \"k\"\n",
        );
        assert_eq!(e.tls, Some(EtcdTls::default()));
    }

    #[test]
    fn an_unknown_kind_is_refused_naming_the_kinds() {
        assert_eq!(
            problems_of(&with_store("kind = \"consul\"\n")),
            [
                "store.kind: \"consul\" is not a store kind; use \"dir\" (the keys dir, the \
              default) or \"etcd\""
            ]
        );
        assert_eq!(
            problems_of(&with_store("kind = \"Etcd\"\n")).len(),
            1,
            "kinds are lowercase"
        );
    }

    #[test]
    fn etcd_without_endpoints_or_a_kek_file_is_refused() {
        assert_eq!(
            problems_of(&with_store("kind = \"etcd\"\n")),
            [
                "store.endpoints: required with kind = \"etcd\": the etcd members' client URLs, \
                 such as [\"https://etcd-0.internal:2379\"]",
                "store.kek_file: required with kind = \"etcd\": the key-encryption key private \
                 keys are sealed under (32 random bytes; create one with `workload-issuer store \
                 new-kek FILE`)",
            ]
        );
        let p = problems_of(&with_store(
            "kind = \"etcd\"\nendpoints = []\nkek_file = \"\"\n",
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("store.endpoints: required"), "{p:?}");
        assert_eq!(p[1], "store.kek_file: must not be empty");
    }

    #[test]
    fn an_endpoint_is_an_http_or_https_url_with_a_host_and_a_port() {
        let shape = "write it as https://host:port or http://host:port";
        for (endpoint, why) in [
            ("127.0.0.1:2379", format!("has no scheme; {shape}")),
            ("etcd-0:2379", format!("has no scheme; {shape}")),
            (
                "grpc://etcd:2379",
                format!("has the scheme \"grpc\"; {shape}"),
            ),
            (
                "unix:///run/etcd.sock",
                format!("has the scheme \"unix\"; {shape}"),
            ),
            (
                "http://etcd",
                format!(
                    "has no port; etcd has no default port, so write the members' client port \
                     (2379 unless changed): {shape}"
                ),
            ),
            (
                "https://etcd.example.com",
                format!(
                    "has no port; etcd has no default port, so write the members' client port \
                     (2379 unless changed): {shape}"
                ),
            ),
            (
                "http://[::1]",
                format!(
                    "has no port; etcd has no default port, so write the members' client port \
                     (2379 unless changed): {shape}"
                ),
            ),
            ("http://etcd:0", format!("has port 0; {shape}")),
            (
                "http://etcd:2379/v3",
                format!("must not have a path, query or fragment; {shape}"),
            ),
            (
                "http://etcd:2379?x=1",
                format!("must not have a path, query or fragment; {shape}"),
            ),
            (
                "http://root:pw@etcd:2379",
                "must not contain user information; set store.username and store.password_file"
                    .into(),
            ),
        ] {
            let p = problems_of(&with_store(&format!(
                "kind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nkek_file = \"k\"\n"
            )));
            assert_eq!(p, [format!("store.endpoints[0]: \"{endpoint}\" {why}")]);
        }
        let p = problems_of(&with_store(
            "kind = \"etcd\"\nendpoints = [\"http://\"]\nkek_file = \"k\"\n",
        ));
        assert!(
            p.len() == 1 && p[0].starts_with("store.endpoints[0]: \"http://\" is not a URL ("),
            "{p:?}"
        );
        // An explicit default port is a port.
        for endpoint in [
            "https://etcd.example.com:443",
            "http://etcd:80",
            "http://[::1]:2379",
            "http://etcd:2379/",
        ] {
            let e = etcd(&format!(
                "kind = \"etcd\"\nendpoints = [\"{endpoint}\"]\nkek_file = \"k\"\n"
            ));
            assert_eq!(e.endpoints, [endpoint]);
        }
    }

    #[test]
    fn endpoints_of_two_schemes_or_listed_twice_are_refused() {
        assert_eq!(
            problems_of(&with_store(
                "kind = \"etcd\"\nendpoints = [\"https://a:2379\", \"http://b:2379\", \
                 \"https://a:2379\"]\nkek_file = \"k\"\n"
            )),
            [
                "store.endpoints[1]: \"http://b:2379\" is http:// while store.endpoints[0] is \
                 https://; reach every member the same way",
                "store.endpoints[2]: \"https://a:2379\" is listed twice (also store.endpoints[0])",
            ]
        );
    }

    #[test]
    fn tls_files_need_https_endpoints() {
        let p = problems_of(&with_store(&format!(
            "{ETCD}ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"c.key\"\n"
        )));
        let expected: Vec<String> = ["ca_file", "cert_file", "key_file"]
            .iter()
            .map(|f| {
                format!(
                    "store.{f}: TLS needs https:// endpoints, and store.endpoints[0] \
                     \"http://127.0.0.1:2379\" is http://; use https:// URLs or leave \
                     store.{f} out"
                )
            })
            .collect();
        assert_eq!(p, expected);
    }

    #[test]
    fn a_client_certificate_goes_with_its_key_and_a_username_with_its_password() {
        let https = "kind = \"etcd\"\nendpoints = [\"https://e:2379\"]\nkek_file = \"k\"\n";
        for (fields, expected) in [
            (
                "cert_file = \"c.pem\"\n",
                "store.key_file: required when store.cert_file is set",
            ),
            (
                "key_file = \"c.key\"\n",
                "store.cert_file: required when store.key_file is set",
            ),
            (
                "username = \"issuer\"\n",
                "store.password_file: required when store.username is set",
            ),
            (
                "password_file = \"pw\"\n",
                "store.username: required when store.password_file is set",
            ),
            (
                "username = \"\"\npassword_file = \"pw\"\n",
                "store.username: must not be empty",
            ),
            (
                "username = \"u\"\npassword_file = \"\"\n",
                "store.password_file: must not be empty",
            ),
        ] {
            let p = problems_of(&with_store(&format!("{https}{fields}")));
            assert!(p.iter().any(|m| m == expected), "{expected} not in {p:?}");
        }
        let e = etcd(&format!(
            "{https}username = \"u\"\npassword_file = \"pw\"\ncert_file = \"c\"\nkey_file = \"k\"\n"
        ));
        assert_eq!(e.username.as_deref(), Some("u"));
        assert!(e
            .tls
            .is_some_and(|t| t.cert_file.is_some() && t.key_file.is_some()));
    }

    #[test]
    fn a_prefix_is_an_absolute_etcd_path_of_printable_ascii() {
        for (prefix, why) in [
            ("workload-issuer", "must start with '/'"),
            ("", "must start with '/'"),
            (
                "/",
                "would be the whole keyspace; give this issuer a prefix of its own, such as \
                 \"/workload-issuer\"",
            ),
            ("/workload-issuer/", "must not end with '/'"),
            ("/a//b", "must not contain \"//\""),
            ("/work load", "may hold only printable ASCII without spaces"),
            ("/émetteur", "may hold only printable ASCII without spaces"),
            ("/a\\tb", "may hold only printable ASCII without spaces"),
        ] {
            let p = problems_of(&with_store(&format!("{ETCD}prefix = \"{prefix}\"\n")));
            let shown = prefix.replace("\\t", "\t");
            assert_eq!(p, [format!("store.prefix: \"{shown}\" {why}")]);
        }
        for prefix in ["/wi", "/platform/workload-issuer", "/a.b-c_d~e:1"] {
            assert_eq!(
                etcd(&format!("{ETCD}prefix = \"{prefix}\"\n")).prefix,
                prefix
            );
        }
    }

    #[test]
    fn the_lease_ttl_is_between_2s_and_60s() {
        assert_eq!(
            etcd(&format!("{ETCD}lease_ttl = \"2s\"\n")).lease_ttl,
            Duration::from_secs(2)
        );
        assert_eq!(
            etcd(&format!("{ETCD}lease_ttl = \"60s\"\n")).lease_ttl,
            Duration::from_secs(60)
        );
        for (ttl, expected) in [
            ("1s", "store.lease_ttl: 1s must be between 2s and 1m"),
            ("61s", "store.lease_ttl: 1m 1s must be between 2s and 1m"),
            ("0s", "store.lease_ttl: 0s must be between 2s and 1m"),
            (
                "2500ms",
                "store.lease_ttl: \"2500ms\" must be a whole number of seconds",
            ),
        ] {
            assert_eq!(
                problems_of(&with_store(&format!("{ETCD}lease_ttl = \"{ttl}\"\n"))),
                [expected]
            );
        }
        let p = problems_of(&with_store(&format!("{ETCD}lease_ttl = \"soon\"\n")));
        assert!(
            p.len() == 1 && p[0].starts_with("store.lease_ttl: \"soon\" is not a duration"),
            "{p:?}"
        );
    }

    #[test]
    fn etcd_fields_with_kind_dir_are_refused_each_by_name() {
        let fields = [
            ("endpoints", "[\"http://e:2379\"]"),
            ("prefix", "\"/p\""),
            ("kek_file", "\"k\""),
            ("ca_file", "\"ca\""),
            ("cert_file", "\"c\""),
            ("key_file", "\"k\""),
            ("username", "\"u\""),
            ("password_file", "\"p\""),
            ("lease_ttl", "\"10s\""),
            ("cache_dir", "\"/tmp\""),
        ];
        let set: String = fields.iter().map(|(f, v)| format!("{f} = {v}\n")).collect();
        let expected: Vec<String> = fields
            .iter()
            .map(|(f, _)| {
                format!(
                    "store.{f}: applies only to kind = \"etcd\"; this store is kind = \"dir\" \
                     (the keys dir)"
                )
            })
            .collect();
        // Explicitly "dir", or the default.
        assert_eq!(
            problems_of(&with_store(&format!("kind = \"dir\"\n{set}"))),
            expected
        );
        assert_eq!(problems_of(&with_store(&set)), expected);
    }

    #[test]
    fn a_value_of_the_wrong_kind_or_an_unknown_field_is_named_with_its_line() {
        let p = problems_of(&with_store(
            "kind = \"etcd\"\nendpoints = \"http://e:2379\"\nkek_file = \"k\"\nendpoint = 1\n",
        ));
        assert_eq!(
            p,
            [
                "line 9: store.endpoints: must be an array of strings such as [\"a\", \"b\"], \
                 not a string",
                "line 11: unknown field `endpoint` in [store]; expected one of: kind, endpoints, \
                 prefix, kek_file, extra_kek_files, ca_file, cert_file, key_file, username, password_file, \
                 lease_ttl, cache_dir",
            ]
        );
    }

    fn with_env(env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::parse_with_env(
            "test.toml",
            &format!("{BASE}{CLUSTER}"),
            env.iter().copied(),
            &Overrides::default(),
        )
    }

    #[test]
    fn every_store_field_has_its_variable_and_endpoints_may_be_comma_separated() {
        let c = with_env(&[
            ("WORKLOAD_ISSUER_STORE__KIND", "etcd"),
            (
                "WORKLOAD_ISSUER_STORE__ENDPOINTS",
                "https://etcd-0:2379, https://etcd-1:2379,https://etcd-2:2379",
            ),
            ("WORKLOAD_ISSUER_STORE__PREFIX", "/env"),
            ("WORKLOAD_ISSUER_STORE__KEK_FILE", "/etc/wi/kek"),
            ("WORKLOAD_ISSUER_STORE__CA_FILE", "ca.pem"),
            ("WORKLOAD_ISSUER_STORE__CERT_FILE", "c.pem"),
            ("WORKLOAD_ISSUER_STORE__KEY_FILE", "c.key"),
            ("WORKLOAD_ISSUER_STORE__USERNAME", "issuer"),
            ("WORKLOAD_ISSUER_STORE__PASSWORD_FILE", "pw"),
            ("WORKLOAD_ISSUER_STORE__LEASE_TTL", "15s"),
            ("WORKLOAD_ISSUER_STORE__CACHE_DIR", "/var/cache/wi"),
        ])
        .unwrap();
        assert_eq!(
            c.store,
            StoreConfig::Etcd(EtcdStoreConfig {
                endpoints: vec![
                    "https://etcd-0:2379".into(),
                    "https://etcd-1:2379".into(),
                    "https://etcd-2:2379".into()
                ],
                prefix: "/env".into(),
                extra_kek_files: Vec::new(),
                kek_file: "/etc/wi/kek".into(),
                tls: Some(EtcdTls {
                    ca_file: Some("ca.pem".into()),
                    cert_file: Some("c.pem".into()),
                    key_file: Some("c.key".into()),
                }),
                username: Some("issuer".into()),
                password_file: Some("pw".into()),
                lease_ttl: Duration::from_secs(15),
                cache_dir: Some("/var/cache/wi".into()),
            })
        );
        // A TOML array works too; a variable wins over the file.
        let c = Config::parse_with_env(
            "test.toml",
            &with_store(ETCD),
            [(
                "WORKLOAD_ISSUER_STORE__ENDPOINTS",
                "[\"http://a:2379\", \"http://b:2379\"]",
            )],
            &Overrides::default(),
        )
        .unwrap();
        let StoreConfig::Etcd(e) = c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(e.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(e.kek_file, PathBuf::from("kek"), "the rest from the file");
    }

    #[test]
    fn a_bad_store_variable_is_named() {
        let p = with_env(&[
            ("WORKLOAD_ISSUER_STORE__KIND", "etcd"),
            (
                "WORKLOAD_ISSUER_STORE__ENDPOINTS",
                "http://a:2379,,etcd:2379",
            ),
            ("WORKLOAD_ISSUER_STORE__KEK_FILE", "k"),
            ("WORKLOAD_ISSUER_STORE__PREFIX", "/p/"),
            ("WORKLOAD_ISSUER_STORE__LEASE_TTL", "5m"),
        ])
        .unwrap_err()
        .problems;
        assert_eq!(
            p,
            [
                "store.endpoints[1]: \"\" is empty; write it as https://host:port or \
                 http://host:port (set by WORKLOAD_ISSUER_STORE__ENDPOINTS)",
                "store.endpoints[2]: \"etcd:2379\" has no scheme; write it as https://host:port \
                 or http://host:port (set by WORKLOAD_ISSUER_STORE__ENDPOINTS)",
                "store.prefix: \"/p/\" must not end with '/' (set by WORKLOAD_ISSUER_STORE__PREFIX)",
                "store.lease_ttl: 5m must be between 2s and 1m (set by \
                 WORKLOAD_ISSUER_STORE__LEASE_TTL)",
            ]
        );
        let p = with_env(&[
            ("WORKLOAD_ISSUER_STORE__ENDPOINT", "http://a:2379"),
            ("WORKLOAD_ISSUER_STORE__ENDPOINTS", "[\"http://a:2379\""),
        ])
        .unwrap_err()
        .problems;
        assert_eq!(
            p,
            [
                "WORKLOAD_ISSUER_STORE__ENDPOINT: store has no field `endpoint`; its fields are: \
                 kind, endpoints, prefix, kek_file, extra_kek_files, ca_file, cert_file, key_file, username, \
                 password_file, lease_ttl, cache_dir",
                "WORKLOAD_ISSUER_STORE__ENDPOINTS: \"[\\\"http://a:2379\\\"\" is not an array of \
                 strings such as [\"a\", \"b\"]; write a TOML array, such as [\"a\", \"b\"], or \
                 the entries separated by commas",
            ]
        );
        // With kind = "dir", a variable that sets an etcd field is named.
        let p = with_env(&[("WORKLOAD_ISSUER_STORE__KEK_FILE", "k")])
            .unwrap_err()
            .problems;
        assert_eq!(
            p,
            [
                "store.kek_file: applies only to kind = \"etcd\"; this store is kind = \"dir\" \
              (the keys dir) (set by WORKLOAD_ISSUER_STORE__KEK_FILE)"
            ]
        );
    }
}
