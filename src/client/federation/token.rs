//! The token under check: its header and claims as any relying party
//! decodes them, without verifying the signature (`verify` does).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use super::super::ClientError;

#[derive(Clone, Debug)]
pub struct Token {
    /// The compact JWT as given.
    pub raw: String,
    pub header: Value,
    pub claims: Value,
}

impl Token {
    pub fn parse(raw: &str) -> Result<Token, ClientError> {
        let part = |i: usize, name: &str| -> Result<Value, ClientError> {
            let text = raw.split('.').nth(i).unwrap_or_default();
            let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|e| {
                ClientError::Input(format!("--token: the {name} is not base64url: {e}"))
            })?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Input(format!("--token: the {name} is not JSON: {e}")))?;
            if value.is_object() {
                Ok(value)
            } else {
                Err(ClientError::Input(format!(
                    "--token: the {name} is not a JSON object"
                )))
            }
        };
        if raw.split('.').count() != 3 {
            return Err(ClientError::Input(
                "--token: not a compact JWT (three base64url parts joined by '.')".into(),
            ));
        }
        Ok(Token {
            raw: raw.to_owned(),
            header: part(0, "header")?,
            claims: part(1, "payload")?,
        })
    }

    pub fn alg(&self) -> &str {
        self.header["alg"].as_str().unwrap_or_default()
    }

    pub fn kid(&self) -> Option<&str> {
        self.header["kid"].as_str()
    }

    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims[name].as_str()
    }

    /// `aud` as a list, whether the token has a string or an array.
    pub fn audiences(&self) -> Vec<&str> {
        match &self.claims["aud"] {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// A NumericDate claim (RFC 7519 §2), in seconds.
    pub fn time(&self, name: &str) -> Option<i64> {
        self.claims[name].as_i64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_without_its_signature_and_bad_ones_are_named() {
        let enc = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let raw = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256","kid":"k"}"#),
            enc(r#"{"aud":"a","iat":5}"#)
        );
        let t = Token::parse(&raw).unwrap();
        assert_eq!(
            (t.alg(), t.kid(), t.audiences()),
            ("RS256", Some("k"), vec!["a"])
        );
        assert_eq!(t.time("iat"), Some(5));
        let err = Token::parse("a.b").unwrap_err().to_string();
        assert!(err.contains("compact JWT"), "{err}");
        let err = Token::parse(&format!("{}.!.s", enc("{}")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("payload is not base64url"), "{err}");
    }
}
