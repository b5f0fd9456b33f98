//! The formats `token` writes a token in: the raw token, JSON, a
//! kubeconfig, the DOCA `tokenFile` keys as an environment file, or a
//! Kubernetes `Secret` (`secret`); the last three point at a `target`.
//!
//! Pure rendering: no I/O, nothing of the server side.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::secret::{SecretOptions, SecretSpec};
use super::target::{Target, TargetOptions};
use super::{ClientError, Issued};

/// How `token` writes what it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The token alone, with a trailing newline.
    Raw,
    /// `{"token": ..., "expirationTimestamp": ...}`.
    Json,
    /// A kubeconfig: the server, its CA and the token.
    Kubeconfig,
    /// The DOCA `tokenFile` keys as KEY=value lines, unquoted.
    Env,
    /// A Kubernetes `Secret` of the DOCA credential request's shape.
    Secret,
}

/// A format with everything it needs, checked before anything is minted.
#[derive(Clone, Debug)]
pub struct Output {
    format: Format,
    target: Target,
    secret: Option<SecretSpec>,
}

impl Output {
    /// Checks the flags for `format`: `--target-*` only where the output
    /// names a server, `--secret-*` and `--label` only with `secret`.
    /// `server` and `ca_pem` are the issuer's, the target by default.
    pub fn new(
        format: Format,
        target: &TargetOptions,
        secret: &SecretOptions,
        server: &str,
        ca_pem: Option<&[u8]>,
    ) -> Result<Output, ClientError> {
        if matches!(format, Format::Raw | Format::Json)
            && (target.server.is_some() || target.ca_file.is_some())
        {
            return Err(ClientError::Input(
                "--target-server and --target-ca apply to --format kubeconfig, secret and env, \
                 the outputs that name a server"
                    .into(),
            ));
        }
        let secret = match format {
            Format::Secret => Some(SecretSpec::new(secret)?),
            _ if secret.given() => {
                return Err(ClientError::Input(
                    "--secret-type, --secret-name, --secret-namespace and --label apply to \
                     --format secret only"
                        .into(),
                ))
            }
            _ => None,
        };
        let output = Output {
            format,
            target: Target::new(target, server, ca_pem)?,
            secret,
        };
        // What the server alone decides is checked now, not after a mint.
        if format == Format::Env {
            output.target.host_and_port("--format env")?;
        }
        if let Some(spec) = &output.secret {
            spec.check(&output.target)?;
        }
        Ok(output)
    }

    /// `issued`, in this format.
    pub fn render(&self, issued: &Issued) -> Result<Vec<u8>, ClientError> {
        let expires = humantime::format_rfc3339_seconds(issued.expires_at).to_string();
        let text = match self.format {
            Format::Raw => format!("{}\n", issued.token),
            Format::Json => {
                let v = serde_json::json!({"token": issued.token, "expirationTimestamp": expires});
                format!("{v}\n")
            }
            Format::Kubeconfig => self.kubeconfig(&issued.token),
            Format::Env => self.env(&issued.token)?,
            Format::Secret => return self.secret_bytes(&issued.token),
        };
        Ok(text.into_bytes())
    }

    fn secret_bytes(&self, token: &str) -> Result<Vec<u8>, ClientError> {
        let spec = self
            .secret
            .as_ref()
            .ok_or_else(|| ClientError::Input("--format secret needs --secret-type".into()))?;
        spec.render(token, &self.target, self.kubeconfig(token).as_bytes())
    }

    fn kubeconfig(&self, token: &str) -> String {
        // JSON strings are YAML strings: quote every value that way.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let ca = self
            .target
            .ca_pem
            .as_deref()
            .map(|pem| {
                format!(
                    "\n    certificate-authority-data: {}",
                    q(&STANDARD.encode(pem))
                )
            })
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: issuer\n  cluster:\n    server: {}{ca}\n\
             users:\n- name: workload\n  user:\n    token: {}\ncontexts:\n- name: workload\n  context:\n    \
             cluster: issuer\n    user: workload\ncurrent-context: workload\n",
            q(&self.target.server()),
            q(token)
        )
    }

    /// KEY=value lines that a POSIX shell (`set -a; . FILE`) and
    /// `kubectl create secret generic --from-env-file` read alike: kubectl
    /// keeps quotes and backslashes as part of the value where a shell
    /// removes them, so no value is quoted, and a value that would need
    /// quoting is refused. The CA is base64 of its PEM, one line.
    fn env(&self, token: &str) -> Result<String, ClientError> {
        let (host, port) = self.target.host_and_port("--format env")?;
        let mut lines = vec![
            ("TOKEN_FILE", token.to_owned()),
            ("KUBERNETES_SERVICE_HOST", host),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
        ];
        if let Some(pem) = &self.target.ca_pem {
            lines.push(("KUBERNETES_CA_DATA", STANDARD.encode(pem)));
        }
        let mut out = String::new();
        for (key, value) in lines {
            env_safe(key, &value)?;
            out.push_str(&format!("{key}={value}\n"));
        }
        Ok(out)
    }
}

/// Whether `value` reads the same unquoted in a shell assignment and in an
/// env file: letters, digits and `-._+/=:[]` (JWTs, base64, URLs). Not `~`,
/// which a shell expands after `=` or `:`, nor anything a shell splits on or
/// substitutes.
fn env_safe(key: &str, value: &str) -> Result<(), ClientError> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-._+/=:[]".contains(c);
    match value.chars().find(|c| !safe(*c)) {
        None if !value.is_empty() => Ok(()),
        None => Err(ClientError::Input(format!(
            "--format env: {key} would be empty"
        ))),
        Some(c) => Err(ClientError::Input(format!(
            "--format env: {key} holds {c:?}, which a shell and kubectl's --from-env-file \
             read differently unquoted, and quoting would end up in kubectl's value; \
             use --format secret or json for this value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> Issued {
        crate::client::mint::hour_token_for_tests()
    }

    fn output(format: Format, server: &str, target: Option<&str>) -> Output {
        let target = TargetOptions {
            server: target.map(str::to_owned),
            ca_file: None,
        };
        Output::new(
            format,
            &target,
            &SecretOptions::default(),
            server,
            Some(b"PEM"),
        )
        .unwrap()
    }

    #[test]
    fn env_output_has_the_doca_keys_unquoted() {
        let out = output(Format::Env, "https://issuer.example.com:8443", None)
            .render(&issued())
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TOKEN_FILE=a.b.c\nKUBERNETES_SERVICE_HOST=https://issuer.example.com\n\
             KUBERNETES_SERVICE_PORT=8443\nKUBERNETES_CA_DATA=UEVN\n"
        );
    }

    #[test]
    fn env_output_refuses_a_value_that_would_need_quotes() {
        let o = output(Format::Env, "https://issuer.example.com", None);
        for token in ["a b", "a'b", "a\"b", "$(x)", "a\\b", "~/x", "a\nb", "a#b"] {
            let mut i = issued();
            i.token = token.into();
            let e = o.render(&i).unwrap_err().to_string();
            assert!(
                e.starts_with("--format env: TOKEN_FILE holds"),
                "{token}: {e}"
            );
        }
    }

    #[test]
    fn kubeconfig_points_at_the_target_when_given() {
        let out = output(
            Format::Kubeconfig,
            "https://issuer.example.com/c/demo",
            Some("https://10.0.0.1:6443"),
        )
        .render(&issued())
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("server: \"https://10.0.0.1:6443\"\n"),
            "{text}"
        );
        // The issuer's CA is not the target's: without --target-ca, none.
        assert!(!text.contains("certificate-authority-data"), "{text}");
    }

    #[test]
    fn flags_of_another_format_are_refused() {
        let target = TargetOptions {
            server: Some("https://10.0.0.1".into()),
            ca_file: None,
        };
        let e = Output::new(
            Format::Raw,
            &target,
            &SecretOptions::default(),
            "https://x",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("apply to --format kubeconfig, secret and env"),
            "{e}"
        );
        let secret = SecretOptions {
            name: Some("x".into()),
            ..SecretOptions::default()
        };
        let e = Output::new(
            Format::Kubeconfig,
            &TargetOptions::default(),
            &secret,
            "https://x",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("apply to --format secret only"), "{e}");
    }

    #[test]
    fn json_output_has_token_and_expiry() {
        let out = output(Format::Json, "https://x", None)
            .render(&issued())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["expirationTimestamp"], "2026-01-01T01:00:00Z");
    }
}
