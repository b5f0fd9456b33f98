//! The fields of every table of the file, and what each holds: the one list
//! the layers work from. The environment layer reads a variable's value as
//! its field's kind; a document (the file, a variable holding a table) is
//! checked against it, every unknown field and every value of the wrong kind
//! reported with where it is, before serde reads the merged layers.
//!
//! Mirrors `schema` (a unit test holds the two together). Imports nothing of
//! the crate beyond `config`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What a setting holds: how a `WORKLOAD_ISSUER_*` value is read, and what
/// the file is checked against before serde reads it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// A string: an address, URL, path, name or rate.
    Str,
    /// A string holding a duration, such as "24h".
    Duration,
    Integer,
    Bool,
    /// An array of strings.
    Strings,
    /// An array of strings that a variable may also give comma-separated
    /// (`a,b`): for lists whose entries never hold a comma, such as URLs.
    List,
    /// A table of these fields.
    Table(&'static [Field]),
    /// An array of tables of these fields.
    Tables(&'static [Field]),
}

impl Kind {
    /// As a problem says what was expected: "must be {}".
    pub(super) fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Duration => "a duration string such as \"24h\", \"90m\" or \"3600s\"",
            Kind::Integer => "an integer",
            Kind::Bool => "true or false",
            Kind::Strings | Kind::List => "an array of strings such as [\"a\", \"b\"]",
            Kind::Table(_) => "a table",
            Kind::Tables(_) => "an array of tables",
        }
    }
}

/// One field of a table: its name in the file and what it holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub(super) name: &'static str,
    pub(super) kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

/// The top level of the file, mirroring `schema::FileConfig` field for
/// field (a unit test holds the two together).
pub(super) const TOP: &[Field] = &[
    f("listen", Kind::Str),
    f("public_url", Kind::Str),
    f("keys_dir", Kind::Str),
    f("store", Kind::Table(STORE)),
    f("tls_cert", Kind::Str),
    f("tls_key", Kind::Str),
    f("clusters", Kind::Tables(CLUSTER)),
    f("api_clients", Kind::Tables(API_CLIENT)),
    f("rotation", Kind::Table(ROTATION)),
    f("tls_reload_interval", Kind::Duration),
    f("api", Kind::Table(API)),
    f("limits", Kind::Table(LIMITS)),
    f("allow_insecure_http", Kind::Bool),
    f("allow_insecure_key_permissions", Kind::Bool),
];

const API: &[Field] = &[
    f("listen", Kind::Str),
    f("tls_cert", Kind::Str),
    f("tls_key", Kind::Str),
    f("client_ca", Kind::Str),
];

const STORE: &[Field] = &[
    f("kind", Kind::Str),
    f("endpoints", Kind::List),
    f("prefix", Kind::Str),
    f("kek_file", Kind::Str),
    f("extra_kek_files", Kind::List),
    f("ca_file", Kind::Str),
    f("cert_file", Kind::Str),
    f("key_file", Kind::Str),
    f("username", Kind::Str),
    f("password_file", Kind::Str),
    f("lease_ttl", Kind::Duration),
    f("cache_dir", Kind::Str),
];

const LIMITS: &[Field] = &[
    f("max_connections", Kind::Integer),
    f("max_header_bytes", Kind::Integer),
    f("header_read_timeout", Kind::Duration),
    f("request_timeout", Kind::Duration),
];

const CLUSTER: &[Field] = &[
    f("id", Kind::Str),
    f("issuer", Kind::Str),
    f("algorithm", Kind::Str),
    f("rsa_bits", Kind::Integer),
    f("audiences", Kind::Strings),
    f("min_token_lifetime", Kind::Duration),
    f("max_token_lifetime", Kind::Duration),
    f("jwks_max_age", Kind::Duration),
    f("rotate_every", Kind::Duration),
    f("publish_ahead", Kind::Duration),
    f("clock_skew", Kind::Duration),
    f("retention", Kind::Duration),
    f("publish_only", Kind::Bool),
    f("kubernetes_signer_socket", Kind::Str),
    f("kubernetes_signer_socket_group", Kind::Str),
];

const ROTATION: &[Field] = &[
    f("enabled", Kind::Bool),
    f("interval", Kind::Duration),
    f("reload_interval", Kind::Duration),
];

const API_CLIENT: &[Field] = &[
    f("name", Kind::Str),
    f("token_sha256", Kind::Str),
    f("token_file", Kind::Str),
    f("generate", Kind::Bool),
    f("clusters", Kind::Strings),
    f("namespaces", Kind::Strings),
    f("certificate_names", Kind::Strings),
    f("allow_common_name", Kind::Bool),
    f("admin", Kind::Bool),
    f("rate_limit", Kind::Str),
    f("burst", Kind::Integer),
];

/// The field names of a table, for a problem that lists them.
pub(super) fn names(fields: &[Field]) -> String {
    fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

/// Checks a table against its fields: every unknown field and every value of
/// the wrong kind becomes a problem, located by `at` (a line of the file, a
/// variable), paired with its byte offset so the caller can order them.
pub(super) fn check_table(
    table: &DeTable<'_>,
    fields: &'static [Field],
    path: &str,
    at: &dyn Fn(Range<usize>) -> String,
    problems: &mut Vec<(usize, String)>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        match fields.iter().find(|f| f.name == name) {
            Some(field) => check_value(value, field.kind, &join(path, name), at, problems),
            None => problems.push((
                key.span().start,
                format!(
                    "{}unknown field `{name}` {}; expected one of: {}",
                    at(key.span()),
                    place(path),
                    names(fields)
                ),
            )),
        }
    }
}

/// Checks one value against the kind of its field (and a table's fields).
pub(super) fn check_value(
    value: &Spanned<DeValue<'_>>,
    kind: Kind,
    path: &str,
    at: &dyn Fn(Range<usize>) -> String,
    problems: &mut Vec<(usize, String)>,
) {
    let wrong = |v: &Spanned<DeValue<'_>>, path: &str, expected: &str| {
        (
            v.span().start,
            format!(
                "{}{path}: must be {expected}, not {}",
                at(v.span()),
                found(v.get_ref())
            ),
        )
    };
    match (kind, value.get_ref()) {
        (Kind::Str | Kind::Duration, DeValue::String(_))
        | (Kind::Integer, DeValue::Integer(_))
        | (Kind::Bool, DeValue::Boolean(_)) => {}
        (Kind::Strings | Kind::List, DeValue::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if !matches!(item.get_ref(), DeValue::String(_)) {
                    problems.push(wrong(item, &format!("{path}[{i}]"), "a string"));
                }
            }
        }
        (Kind::Table(fields), DeValue::Table(table)) => {
            check_table(table, fields, path, at, problems);
        }
        (Kind::Tables(fields), DeValue::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                match item.get_ref() {
                    DeValue::Table(table) => check_table(table, fields, &path, at, problems),
                    _ => problems.push(wrong(item, &path, "a table")),
                }
            }
        }
        _ => problems.push(wrong(value, path, kind.describe())),
    }
}

/// A field's path as problems name it: `limits.max_connections`,
/// `clusters[0].id`.
pub(super) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Where in the file a table's path is, as a reader finds it.
fn place(path: &str) -> String {
    if path.is_empty() {
        "at the top level".to_owned()
    } else if path.ends_with(']') {
        format!("in {path}")
    } else {
        format!("in [{path}]")
    }
}

fn found(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The 1-based line of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use serde::de::{self, Deserialize, Visitor};

    use super::*;
    use crate::config::schema::{
        FileApi, FileApiClient, FileCluster, FileConfig, FileLimits, FileRotation, FileStore,
    };

    /// The field names serde's derive gives a struct: the deserializer it
    /// is handed records them and stops.
    fn serde_fields<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
        #[derive(Debug)]
        struct Stop;
        impl fmt::Display for Stop {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl de::Error for Stop {
            fn custom<M: fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        struct Grab<'a>(&'a mut &'static [&'static str]);
        impl<'de> de::Deserializer<'de> for Grab<'_> {
            type Error = Stop;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                *self.0 = fields;
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
                enum identifier ignored_any
            }
        }
        let mut fields: &'static [&'static str] = &[];
        let _ = T::deserialize(Grab(&mut fields));
        fields
    }

    fn sub(fields: &'static [Field], name: &str) -> &'static [Field] {
        match fields.iter().find(|f| f.name == name).map(|f| f.kind) {
            Some(Kind::Table(sub) | Kind::Tables(sub)) => sub,
            other => panic!("{name} is {other:?}"),
        }
    }

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_unstable();
        names
    }

    #[test]
    fn the_field_lists_name_exactly_the_fields_serde_reads() {
        for (table, fields, serde) in [
            ("top level", TOP, serde_fields::<FileConfig>()),
            ("api", sub(TOP, "api"), serde_fields::<FileApi>()),
            ("limits", sub(TOP, "limits"), serde_fields::<FileLimits>()),
            ("store", sub(TOP, "store"), serde_fields::<FileStore>()),
            (
                "rotation",
                sub(TOP, "rotation"),
                serde_fields::<FileRotation>(),
            ),
            (
                "clusters",
                sub(TOP, "clusters"),
                serde_fields::<FileCluster>(),
            ),
            (
                "api_clients",
                sub(TOP, "api_clients"),
                serde_fields::<FileApiClient>(),
            ),
        ] {
            assert!(!serde.is_empty(), "{table}: no fields recorded");
            assert_eq!(
                sorted(fields.iter().map(|f| f.name).collect()),
                sorted(serde.to_vec()),
                "{table}"
            );
        }
    }

    /// A value of every field's kind, as a document.
    fn sample(fields: &[Field]) -> toml::Table {
        fields
            .iter()
            .map(|f| {
                let v = match f.kind {
                    Kind::Str => toml::Value::String("x".into()),
                    Kind::Duration => toml::Value::String("1s".into()),
                    Kind::Integer => toml::Value::Integer(1),
                    Kind::Bool => toml::Value::Boolean(true),
                    Kind::Strings | Kind::List => toml::Value::Array(vec!["x".into()]),
                    Kind::Table(sub) => toml::Value::Table(sample(sub)),
                    Kind::Tables(sub) => toml::Value::Array(vec![toml::Value::Table(sample(sub))]),
                };
                (f.name.to_owned(), v)
            })
            .collect()
    }

    #[test]
    fn every_kind_is_one_serde_reads_its_field_as() {
        let doc = toml::Value::Table(sample(TOP));
        if let Err(e) = serde_path_to_error::deserialize::<_, FileConfig>(doc) {
            panic!("{}: {}", e.path(), e.inner());
        }
    }

    #[test]
    fn lines_are_counted_from_one() {
        let text = "a = 1\nb = 2\n";
        assert_eq!(line_of(text, 0), 1);
        assert_eq!(line_of(text, 6), 2);
        assert_eq!(line_of(text, 999), 3);
    }
}
