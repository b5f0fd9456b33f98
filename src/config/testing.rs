//! What the configuration's unit tests share: a minimal valid top level and
//! shorthands to parse a text.

use super::{Config, ConfigError, Overrides};

pub(crate) const BASE: &str = r#"
listen = "127.0.0.1:8080"
public_url = "https://oidc.example.com"
keys_dir = "keys"
"#;

pub(crate) const CLUSTER: &str = "[[clusters]]\nid = \"demo\"\n";

pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("test.toml", text, &Overrides::default())
}

pub(crate) fn problems_of(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems,
    }
}
