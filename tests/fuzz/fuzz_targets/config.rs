//! The configuration file: any UTF-8 text must parse or be refused with at
//! least one problem, never panic. An accepted file holds what validation
//! promises (src/config/validate/).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use workload_issuer::config::{Config, Overrides, StoreConfig};
use workload_issuer::k8s::names::{check_audience, is_dns_label};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse("fuzz", text, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.problems.is_empty(), "refused without a problem");
            assert_eq!(e.source, "fuzz");
            return;
        }
    };
    // A config may declare no cluster: a platform can create every one at
    // run time (the admin API, `clusters add`).
    for (i, c) in config.clusters.iter().enumerate() {
        assert!(is_dns_label(&c.id), "cluster id {:?}", c.id);
        for other in &config.clusters[..i] {
            assert_ne!(other.id, c.id, "two clusters with one id");
            assert_ne!(
                other.issuer_path, c.issuer_path,
                "two issuers with one path"
            );
        }
        assert!(
            !c.issuer_path.ends_with('/'),
            "issuer path {:?}",
            c.issuer_path
        );
        assert!(!c.audiences.is_empty(), "cluster {} has no audience", c.id);
        for aud in &c.audiences {
            assert!(check_audience(aud).is_ok(), "audience {aud:?}");
        }
        assert!(c.min_token_lifetime >= Duration::from_secs(1), "{c:?}");
        assert!(c.min_token_lifetime <= c.max_token_lifetime, "{c:?}");
    }
    if let StoreConfig::Etcd(e) = &config.store {
        assert!(!e.endpoints.is_empty(), "{e:?}");
        let https = e.endpoints[0].starts_with("https://");
        for endpoint in &e.endpoints {
            assert!(
                endpoint.starts_with(if https { "https://" } else { "http://" }),
                "endpoints of two schemes: {e:?}"
            );
        }
        assert_eq!(e.tls.is_some(), https, "TLS exactly with https: {e:?}");
        if let Some(tls) = &e.tls {
            assert_eq!(tls.cert_file.is_some(), tls.key_file.is_some(), "{e:?}");
        }
        assert_eq!(e.username.is_some(), e.password_file.is_some(), "{e:?}");
        let p = &e.prefix;
        assert!(p.starts_with('/') && p.len() > 1 && !p.ends_with('/'), "prefix {p:?}");
        assert!(!p.contains("//"), "prefix {p:?}");
        assert!(p.bytes().all(|b| b.is_ascii_graphic()), "prefix {p:?}");
        assert!(!e.kek_file.as_os_str().is_empty(), "{e:?}");
        assert!(
            (Duration::from_secs(2)..=Duration::from_secs(60)).contains(&e.lease_ttl),
            "{e:?}"
        );
    }
});
