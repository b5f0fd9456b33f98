//! Loading: the embedded default or a file, and the flag overrides, read
//! into the file schema and handed to validation.
//!
//! Imports nothing of `keys`, `issuer`, `http`, `server`, `serve`, `client`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::model::Config;
use super::schema::FileConfig;
use super::validate::validate;

/// The configuration used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// Values given on the command line or in the environment; each wins over the
/// file when set.
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

impl Config {
    /// Loads `path`, or the embedded default when `None`, applies the
    /// overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (source, text) = match path {
            Some(p) => {
                let source = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source: source.clone(),
                    problems: vec![format!("cannot read the file: {e}")],
                })?;
                (source, text)
            }
            None => (
                "the embedded default".to_owned(),
                EMBEDDED_DEFAULT.to_owned(),
            ),
        };
        Config::parse(&source, &text, overrides)
    }

    pub fn parse(source: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            source: source.to_owned(),
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        if let Some(v) = &overrides.listen {
            file.listen = v.clone();
        }
        if let Some(v) = &overrides.public_url {
            file.public_url = v.clone();
        }
        if let Some(v) = &overrides.keys_dir {
            file.keys_dir = v.clone();
        }
        if let Some(v) = &overrides.tls_cert {
            file.tls_cert = Some(v.clone());
        }
        if let Some(v) = &overrides.tls_key {
            file.tls_key = Some(v.clone());
        }
        let mut problems = Vec::new();
        let config = validate(file, &mut problems);
        if problems.is_empty() {
            if let Some(config) = config {
                return Ok(config);
            }
        }
        Err(ConfigError {
            source: source.to_owned(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::testing::{parse, BASE};
    use crate::config::DEFAULT_AUDIENCE;
    use crate::keys::material::KeySpec;

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::load(None, &Overrides::default()).unwrap();
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
        let c = Config::load(
            Some(Path::new("config/example.toml")),
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
        let c = Config::load(None, &o).unwrap();
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
}
