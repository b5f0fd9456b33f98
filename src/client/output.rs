//! The formats `token` writes a token in: the raw token, JSON, a
//! kubeconfig, or the DOCA `tokenFile` environment keys.
//!
//! Pure rendering: no I/O, nothing of the server side.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

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
    /// The DOCA `tokenFile` keys as KEY='value' lines.
    Env,
}

/// Renders `issued` in `format`. `ca_pem` is the server's CA, when given.
pub fn render(
    format: Format,
    issued: &Issued,
    server: &str,
    ca_pem: Option<&[u8]>,
) -> Result<Vec<u8>, ClientError> {
    let expires = humantime::format_rfc3339_seconds(issued.expires_at).to_string();
    let text = match format {
        Format::Raw => format!("{}\n", issued.token),
        Format::Json => {
            let v = serde_json::json!({"token": issued.token, "expirationTimestamp": expires});
            format!("{v}\n")
        }
        Format::Kubeconfig => {
            // JSON strings are YAML strings: quote every value that way.
            let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
            let ca = ca_pem
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
                q(server),
                q(&issued.token)
            )
        }
        Format::Env => {
            let url = url::Url::parse(server)
                .map_err(|e| ClientError::Input(format!("--server: {e}")))?;
            let host = url.host_str().unwrap_or_default().to_owned();
            let port = url.port_or_known_default().unwrap_or(443);
            let mut out = format!(
                "TOKEN_FILE={}\nKUBERNETES_SERVICE_HOST={}\nKUBERNETES_SERVICE_PORT={port}\n",
                shell_quote(&issued.token),
                shell_quote(&host)
            );
            if let Some(pem) = ca_pem {
                out.push_str(&format!(
                    "KUBERNETES_CA_DATA={}\n",
                    shell_quote(&STANDARD.encode(pem))
                ));
            }
            out
        }
    };
    Ok(text.into_bytes())
}

/// Single-quotes a value for a shell or an env file.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> Issued {
        crate::client::mint::hour_token_for_tests()
    }

    #[test]
    fn env_output_has_the_doca_keys() {
        let out = render(
            Format::Env,
            &issued(),
            "https://issuer.example.com:8443/c/demo",
            Some(b"PEM"),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "TOKEN_FILE='a.b.c'\nKUBERNETES_SERVICE_HOST='issuer.example.com'\nKUBERNETES_SERVICE_PORT=8443\nKUBERNETES_CA_DATA='UEVN'\n"
        );
    }

    #[test]
    fn json_output_has_token_and_expiry() {
        let out = render(Format::Json, &issued(), "https://x", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["expirationTimestamp"], "2026-01-01T01:00:00Z");
    }
}
