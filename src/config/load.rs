//! Loading: the layers, each over the one before, merged table by table and
//! read into the file schema, then handed to validation.
//!
//! 1. built-in defaults: the embedded `config/default.toml`;
//! 2. the file (`--config`), which holds only what it changes;
//! 3. `WORKLOAD_ISSUER_*` environment variables (`env`);
//! 4. flags ([`Overrides`]).
//!
//! Tables merge field by field; any other value, an array included, replaces
//! the one below. The embedded default's cluster `demo` and client `admin`
//! go together: a file that lists clusters or API clients replaces both, so
//! a demo is never mixed into a real configuration.
//!
//! The process environment is read by [`Config::load`] only; the other entry
//! points take the environment they are given, so tests and the fuzzer do not
//! see the developer's. Imports nothing of `keys`, `issuer`, `http`, `server`,
//! `serve`, `client`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::DeTable;
use toml::{Table, Value};

use super::env;
use super::fields::{check_table, line_of, TOP};
use super::layer::{merge, SetBy};
use super::model::Config;
use super::schema::FileConfig;
use super::validate::validate;

/// The built-in defaults, and the whole configuration when no `--config` is
/// given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// The fields of the embedded default that only apply while no file lists
/// clusters or API clients: its demo.
const DEMO: [&str; 2] = ["clusters", "api_clients"];

/// Values given as flags: the last layer, over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub keys_dir: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}:", self.source)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// No environment: for [`Config::parse`] and its callers.
fn no_env() -> std::iter::Empty<(OsString, OsString)> {
    std::iter::empty()
}

impl Config {
    /// The defaults, `path` (none: the embedded default alone), the process's
    /// `WORKLOAD_ISSUER_*` variables and the flags, validated.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_with_env(path, std::env::vars_os(), overrides)
    }

    /// As [`Config::load`], with the environment given rather than the
    /// process's.
    pub fn load_with_env<K, V>(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (K, V)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let Some(path) = path else {
            let mut config = layered("the embedded default", None, env, overrides)?;
            config.overrides = overrides.clone();
            return Ok(config);
        };
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        let mut config = layered(&source, Some(&text), env, overrides)?;
        config.file = Some(path.to_owned());
        config.overrides = overrides.clone();
        Ok(config)
    }

    /// `text` as the file (named `source` in problems) over the defaults, then
    /// the flags; no environment.
    pub fn parse(source: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        layered(source, Some(text), no_env(), overrides)
    }

    /// As [`Config::parse`], with the environment layer given.
    pub fn parse_with_env<K, V>(
        source: &str,
        text: &str,
        env: impl IntoIterator<Item = (K, V)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        layered(source, Some(text), env, overrides)
    }
}

fn layered<K, V>(
    source: &str,
    file: Option<&str>,
    env: impl IntoIterator<Item = (K, V)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut problems = Vec::new();
    let mut merged = document(EMBEDDED_DEFAULT, &mut problems).map_err(|e| ConfigError {
        source: "the embedded default".into(),
        problems: vec![e],
    })?;
    if let Some(text) = file {
        let layer = document(text, &mut problems).map_err(|e| ConfigError {
            source: source.to_owned(),
            problems: vec![e],
        })?;
        if DEMO.iter().any(|k| layer.contains_key(*k)) {
            for k in DEMO {
                merged.remove(k);
            }
        }
        merge(&mut merged, layer);
    }
    let mut set_by = SetBy::new();
    env::apply(env, &mut merged, &mut set_by, &mut problems);
    flags(overrides, &mut merged, &mut set_by, &mut problems);
    if problems.is_empty() {
        match serde_path_to_error::deserialize::<_, FileConfig>(Value::Table(merged)) {
            Ok(file) => {
                if let Some(config) = validate(file, &mut problems).filter(|_| problems.is_empty())
                {
                    return Ok(config);
                }
            }
            // toml's own message repeats the path ("in `a.b`"); the path
            // comes first here, as in every other problem.
            Err(e) => problems.push(match e.path().to_string().as_str() {
                "." => e.inner().message().to_owned(),
                path => format!("{path}: {}", e.inner().message()),
            }),
        }
    }
    Err(ConfigError {
        source: source.to_owned(),
        problems: problems.into_iter().map(|p| named_by(p, &set_by)).collect(),
    })
}

/// Parses one TOML document and checks it against the fields: every unknown
/// field and every value of the wrong kind is a problem with its line. A
/// syntax error ends the reading (returned as `Err`).
fn document(text: &str, problems: &mut Vec<String>) -> Result<Table, String> {
    let syntax = |e: toml::de::Error| e.to_string().trim_end().to_owned();
    let mut found = Vec::new();
    {
        // The spanned tree is only for finding problems: dropped before the
        // plain one is built, so the two are never in memory together (with
        // thousands of clusters, what a start allocates and frees here stays
        // in the process's resident memory).
        let spanned = DeTable::parse(text).map_err(syntax)?;
        let at = |span: std::ops::Range<usize>| format!("line {}: ", line_of(text, span.start));
        check_table(spanned.get_ref(), TOP, "", &at, &mut found);
    }
    found.sort_by_key(|(offset, _)| *offset);
    problems.extend(found.into_iter().map(|(_, p)| p));
    toml::from_str::<Table>(text).map_err(syntax)
}

/// The flag layer.
fn flags(o: &Overrides, merged: &mut Table, set_by: &mut SetBy, problems: &mut Vec<String>) {
    let mut path = |flag: &str, p: &Option<PathBuf>| match p.as_deref().map(Path::to_str) {
        None => None,
        Some(Some(s)) => Some(s.to_owned()),
        Some(None) => {
            problems.push(format!(
                "{flag}: the path is not UTF-8; a configuration holds UTF-8 paths only"
            ));
            None
        }
    };
    let given = [
        ("--listen", "listen", o.listen.clone()),
        ("--public-url", "public_url", o.public_url.clone()),
        ("--keys-dir", "keys_dir", path("--keys-dir", &o.keys_dir)),
        ("--tls-cert", "tls_cert", path("--tls-cert", &o.tls_cert)),
        ("--tls-key", "tls_key", path("--tls-key", &o.tls_key)),
    ];
    for (flag, field, value) in given {
        if let Some(value) = value {
            merged.insert(field.to_owned(), Value::String(value));
            set_by.push((field.to_owned(), flag.to_owned()));
        }
    }
}

/// Adds to a problem about a value set by a variable or a flag which one set
/// it: the problem starts with the field's path, and the longest path set
/// that leads to it names the setter (a flag over a variable for one path).
fn named_by(problem: String, set_by: &SetBy) -> String {
    let field = problem.split(": ").next().unwrap_or_default();
    let setter = set_by
        .iter()
        .enumerate()
        .filter(|(_, (path, _))| {
            field
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
        .max_by_key(|(i, (path, _))| (path.len(), *i));
    match setter {
        Some((_, (_, by))) => format!("{problem} (set by {by})"),
        None => problem,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{parse, BASE};
    use crate::config::KeySpec;
    use crate::config::DEFAULT_AUDIENCE;

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::load_with_env(None, no_env(), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.clusters[0].issuer, "http://127.0.0.1:8080/c/demo");
        assert_eq!(c.clusters[0].issuer_path, "/c/demo");
        assert_eq!(c.clusters[0].key_spec, KeySpec::Rsa { bits: 2048 });
        assert_eq!(c.clusters[0].audiences, vec![DEFAULT_AUDIENCE]);
        assert_eq!(c.clusters[0].max_token_lifetime, Duration::from_secs(86400));
        assert_eq!(c.api_clients.len(), 1);
    }

    #[test]
    fn the_example_file_is_valid() {
        let c = Config::load_with_env(
            Some(Path::new("config/example.toml")),
            no_env(),
            &Overrides::default(),
        )
        .unwrap();
        let ids: Vec<_> = c.clusters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["demo", "edge"]);
        assert_eq!(c.clusters[1].key_spec, KeySpec::P256);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            public_url: Some("https://id.example.org".into()),
            ..Default::default()
        };
        let c = Config::load_with_env(None, no_env(), &o).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.clusters[0].issuer, "https://id.example.org/c/demo");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse(&format!("{BASE}\nlisten_port = 3\n")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `listen_port`"),
            "{err}"
        );
        let err = parse(&format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\nalgo = \"RS256\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `algo`"), "{err}");
    }

    #[test]
    fn tokens_are_never_inline() {
        let text = format!(
            "{BASE}\n[[clusters]]\nid = \"a\"\n[[api_clients]]\nname = \"x\"\ntoken = \"secret\"\nclusters = [\"*\"]\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `token`"), "{err}");
    }

    fn with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::parse_with_env(
            "test.toml",
            text,
            env.iter().copied(),
            &Overrides::default(),
        )
    }

    /// Problems, or none when the configuration is accepted.
    fn problems_with_env(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        with_env(text, env)
            .err()
            .map(|e| e.problems)
            .unwrap_or_default()
    }

    const ONE_CLUSTER: &str = "[[clusters]]\nid = \"a\"\n";

    #[test]
    fn each_layer_wins_over_the_one_below() {
        let file = "listen = \"127.0.0.1:9001\"\npublic_url = \"https://file.example.com\"\n\
                    tls_reload_interval = \"20s\"\n[[clusters]]\nid = \"a\"\n";
        let env = [
            ("WORKLOAD_ISSUER_LISTEN", "127.0.0.1:9002"),
            ("WORKLOAD_ISSUER_PUBLIC_URL", "https://env.example.com"),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:9003".into()),
            ..Default::default()
        };
        let c = Config::parse_with_env("test.toml", file, env, &flags).unwrap();
        assert_eq!(c.listen.port(), 9003, "a flag wins over a variable");
        assert_eq!(
            c.public_url, "https://env.example.com",
            "a variable over the file"
        );
        assert_eq!(
            c.tls_reload_interval,
            Duration::from_secs(20),
            "the file over a default"
        );
        assert_eq!(
            c.keys_dir,
            Path::new("./keys"),
            "the default where none is set"
        );
        let c = Config::parse_with_env("test.toml", file, env, &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 9002);
    }

    #[test]
    fn a_file_with_only_one_setting_starts_from_the_defaults() {
        let c = parse("listen = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        // Neither clusters nor clients listed: the embedded demo stays whole.
        assert_eq!(c.clusters[0].id, "demo");
        assert_eq!(c.api_clients[0].name, "admin");

        let c = parse(ONE_CLUSTER).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.clusters[0].issuer, "http://127.0.0.1:8080/c/a");
        assert_eq!(c.clusters.len(), 1);
        // A file that lists clusters replaces the demo's client too.
        assert!(c.api_clients.is_empty());
    }

    #[test]
    fn nested_settings_and_array_entries_are_set_with_double_underscores() {
        let env = [
            // Listed out of order: entry 1 is added before its fields are set.
            ("WORKLOAD_ISSUER_CLUSTERS__1__ALGORITHM", "ES256"),
            ("WORKLOAD_ISSUER_CLUSTERS__1__ID", "b"),
            (
                "WORKLOAD_ISSUER_CLUSTERS__0__ISSUER",
                "https://id.example.com/x",
            ),
            (
                "WORKLOAD_ISSUER_CLUSTERS__0__AUDIENCES",
                "[\"sts.amazonaws.com\", \"api\"]",
            ),
            ("WORKLOAD_ISSUER_API__LISTEN", "127.0.0.1:9443"),
            ("WORKLOAD_ISSUER_ROTATION__RELOAD_INTERVAL", "30s"),
            ("WORKLOAD_ISSUER_ROTATION__ENABLED", "false"),
            ("WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS", "64"),
            ("WORKLOAD_ISSUER_LIMITS", "{ max_header_bytes = 9000 }"),
            ("WORKLOAD_ISSUER_ALLOW_INSECURE_KEY_PERMISSIONS", "true"),
            // The file lists no client: entry 0 starts the array.
            ("WORKLOAD_ISSUER_API_CLIENTS__0__NAME", "ci"),
            ("WORKLOAD_ISSUER_API_CLIENTS__0__TOKEN_FILE", "ci.token"),
            ("WORKLOAD_ISSUER_API_CLIENTS__0__CLUSTERS", "[\"b\"]"),
            // Not settings, and not this program's: left alone.
            ("WORKLOAD_ISSUER_CONFIG", "elsewhere.toml"),
            ("WORKLOAD_ISSUER_LOG", "debug"),
            ("WORKLOAD_ISSUER_REQUIRE_INTEROP", "1"),
            ("PATH", "/bin"),
        ];
        let c = with_env(&format!("{BASE}{ONE_CLUSTER}"), &env).unwrap();
        assert_eq!(c.clusters[0].id, "a");
        assert_eq!(c.clusters[0].issuer, "https://id.example.com/x");
        assert_eq!(c.clusters[0].audiences, ["sts.amazonaws.com", "api"]);
        assert_eq!(c.clusters[1].id, "b");
        assert_eq!(c.clusters[1].key_spec, KeySpec::P256);
        assert_eq!(c.api_listener.unwrap().addr.port(), 9443);
        assert_eq!(c.rotation.reload_interval, Duration::from_secs(30));
        assert!(!c.rotation.enabled);
        // A table merges field by field, whatever the order of the variables.
        assert_eq!(c.limits.max_connections, 64);
        assert_eq!(c.limits.max_header_bytes, 9000);
        assert!(c.allow_insecure_key_permissions);
        assert_eq!(c.api_clients[0].name, "ci");
        assert_eq!(c.api_clients[0].clusters, Some(vec!["b".to_owned()]));

        // The whole array at once, then an entry of it.
        let c = with_env(
            &format!("{BASE}{ONE_CLUSTER}"),
            &[
                (
                    "WORKLOAD_ISSUER_CLUSTERS",
                    "[{ id = \"x\" }, { id = \"y\" }]",
                ),
                ("WORKLOAD_ISSUER_CLUSTERS__1__ALGORITHM", "ES256"),
            ],
        )
        .unwrap();
        let ids: Vec<_> = c.clusters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["x", "y"]);
        assert_eq!(c.clusters[1].key_spec, KeySpec::P256);
    }

    #[test]
    fn a_bad_value_names_its_variable_and_how_to_write_it() {
        let p = problems_with_env(
            &format!("{BASE}{ONE_CLUSTER}"),
            &[
                ("WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS", "lots"),
                ("WORKLOAD_ISSUER_ROTATION__ENABLED", "yes"),
                ("WORKLOAD_ISSUER_CLUSTERS__0__AUDIENCES", "a,b"),
                ("WORKLOAD_ISSUER_CLUSTERS__0__RSA_BITS", "\"2048\""),
                ("WORKLOAD_ISSUER_LIMITS", "{ max_conections = 5 }"),
            ],
        );
        assert_eq!(
            p,
            [
                "WORKLOAD_ISSUER_LIMITS__MAX_CONNECTIONS: \"lots\" is not an integer; write a \
                 whole number, such as 10000",
                "WORKLOAD_ISSUER_ROTATION__ENABLED: \"yes\" is not true or false; write true or false",
                "WORKLOAD_ISSUER_CLUSTERS__0__AUDIENCES: \"a,b\" is not an array of strings such \
                 as [\"a\", \"b\"]; write a TOML array, such as [\"a\", \"b\"]",
                "WORKLOAD_ISSUER_CLUSTERS__0__RSA_BITS: \"\\\"2048\\\"\" is not an integer; write \
                 a whole number, such as 10000",
                "WORKLOAD_ISSUER_LIMITS: unknown field `max_conections` in [limits]; expected one \
                 of: max_connections, max_header_bytes, header_read_timeout, request_timeout",
            ]
        );
        // Values only validation can judge name their variable too.
        let p = problems_with_env(
            &format!("{BASE}{ONE_CLUSTER}"),
            &[
                ("WORKLOAD_ISSUER_LISTEN", "nowhere"),
                ("WORKLOAD_ISSUER_CLUSTERS__0__JWKS_MAX_AGE", "soon"),
                ("WORKLOAD_ISSUER_LIMITS__MAX_HEADER_BYTES", "-1"),
            ],
        );
        assert_eq!(
            p,
            [
                "limits.max_header_bytes: invalid value: integer `-1`, expected u32 (set by \
              WORKLOAD_ISSUER_LIMITS__MAX_HEADER_BYTES)"
            ]
        );
        let p = problems_with_env(
            &format!("{BASE}{ONE_CLUSTER}"),
            &[
                ("WORKLOAD_ISSUER_LISTEN", "nowhere"),
                ("WORKLOAD_ISSUER_CLUSTERS__0__JWKS_MAX_AGE", "soon"),
            ],
        );
        for expected in [
            "listen: \"nowhere\" is not an address and port such as 127.0.0.1:8080 or [::]:443 \
             (set by WORKLOAD_ISSUER_LISTEN)",
            "(set by WORKLOAD_ISSUER_CLUSTERS__0__JWKS_MAX_AGE)",
        ] {
            assert!(
                p.iter().any(|m| m.contains(expected)),
                "{expected} not in {p:?}"
            );
        }
        // A flag over a variable: the flag is named.
        let flags = Overrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        let err = Config::parse_with_env(
            "test.toml",
            &format!("{BASE}{ONE_CLUSTER}"),
            [("WORKLOAD_ISSUER_LISTEN", "127.0.0.1:1")],
            &flags,
        )
        .unwrap_err();
        assert!(err.problems[0].ends_with("(set by --listen)"), "{err}");
    }

    #[test]
    fn an_unknown_variable_is_named_with_what_it_could_be() {
        let p = problems_with_env(
            &format!("{BASE}{ONE_CLUSTER}"),
            &[
                ("WORKLOAD_ISSUER_LISTN", "127.0.0.1:1"),
                ("WORKLOAD_ISSUER_LIMITS__MAX_CONN", "5"),
                ("WORKLOAD_ISSUER_LISTEN__PORT", "5"),
                ("WORKLOAD_ISSUER_CLUSTERS__FIRST__ID", "x"),
                ("WORKLOAD_ISSUER_CLUSTERS__5__ID", "x"),
                ("WORKLOAD_ISSUER_", "x"),
            ],
        );
        let expected = [
            "WORKLOAD_ISSUER_LISTN: no setting is called `listn`; the settings are listen, \
             public_url,",
            "WORKLOAD_ISSUER_LIMITS__MAX_CONN: limits has no field `max_conn`; its fields are: \
             max_connections,",
            "WORKLOAD_ISSUER_LISTEN__PORT: listen is a string and has no fields; set it as \
             WORKLOAD_ISSUER_LISTEN",
            "WORKLOAD_ISSUER_CLUSTERS__FIRST__ID: clusters is an array of tables: address an \
             entry by its index, as WORKLOAD_ISSUER_CLUSTERS__0__ID",
            "WORKLOAD_ISSUER_CLUSTERS__5__ID: clusters has 1 entries before this variable, so \
             index 5 would leave a gap",
            "WORKLOAD_ISSUER_: no setting is called ``",
        ];
        assert_eq!(p.len(), expected.len(), "{p:#?}");
        for e in expected {
            assert!(p.iter().any(|m| m.starts_with(e)), "{e} not in {p:#?}");
        }
    }

    #[test]
    fn every_unknown_field_is_reported_with_its_line() {
        let text = "listen = \"127.0.0.1:8080\"\n\
                    listen_port = 8080\n\
                    [api]\n\
                    lisen = \"127.0.0.1:9443\"\n\
                    [[clusters]]\n\
                    id = \"a\"\n\
                    [[clusters]]\n\
                    id = \"b\"\n\
                    algo = \"ES256\"\n\
                    rsa_bits = \"2048\"\n\
                    [[api_clients]]\n\
                    name = \"x\"\n\
                    token = \"secret\"\n\
                    clusters = [\"*\", 3]\n";
        let p = problems_with_env(text, &[]);
        assert_eq!(
            p,
            [
                "line 2: unknown field `listen_port` at the top level; expected one of: listen, \
                 public_url, keys_dir, store, tls_cert, tls_key, clusters, api_clients, \
                 rotation, tls_reload_interval, api, limits, allow_insecure_http, \
                 allow_insecure_key_permissions",
                "line 4: unknown field `lisen` in [api]; expected one of: listen, tls_cert, \
                 tls_key, client_ca",
                "line 9: unknown field `algo` in clusters[1]; expected one of: id, issuer, \
                 algorithm, rsa_bits, audiences, min_token_lifetime, max_token_lifetime, \
                 jwks_max_age, rotate_every, publish_ahead, clock_skew, retention, publish_only, \
                 kubernetes_signer_socket, kubernetes_signer_socket_group",
                "line 10: clusters[1].rsa_bits: must be an integer, not a string",
                "line 13: unknown field `token` in api_clients[0]; expected one of: name, \
                 token_sha256, token_file, generate, clusters, namespaces, certificate_names, \
                 allow_common_name, admin, rate_limit, burst",
                "line 14: api_clients[0].clusters[1]: must be a string, not an integer",
            ]
        );
    }
}
