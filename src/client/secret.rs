//! `token --format secret`: a Kubernetes `Secret` holding the credentials
//! as the DOCA credential request (`DPUServiceCredentialRequest`) writes
//! them, of type `Opaque`: for `tokenFile` the keys `TOKEN_FILE`,
//! `KUBERNETES_SERVICE_HOST` (with its scheme), `KUBERNETES_SERVICE_PORT`
//! and `KUBERNETES_CA_DATA` (the CA PEM); for `kubeconfig` the key
//! `kubeconfig`. Each value is base64-encoded once, by the Secret's `data`.
//!
//! Owns the checks of the Secret's name, namespace and labels (with the
//! Kubernetes rules of `k8s::names`) and the rendering. Pure: no I/O,
//! nothing of the server side.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::target::Target;
use super::ClientError;
use crate::k8s::names;

/// What the Secret holds, DOCA's `spec.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretType {
    /// The key `kubeconfig`: a kubeconfig for the target.
    Kubeconfig,
    /// The keys `TOKEN_FILE`, `KUBERNETES_SERVICE_HOST`,
    /// `KUBERNETES_SERVICE_PORT` and `KUBERNETES_CA_DATA`.
    TokenFile,
}

/// The `--secret-*` and `--label` flags, as given.
#[derive(Clone, Debug, Default)]
pub struct SecretOptions {
    pub kind: Option<SecretType>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// `KEY=VALUE`, as given.
    pub labels: Vec<String>,
}

impl SecretOptions {
    /// Whether any of the flags was given.
    pub fn given(&self) -> bool {
        self.kind.is_some()
            || self.name.is_some()
            || self.namespace.is_some()
            || !self.labels.is_empty()
    }
}

/// A checked Secret to write.
#[derive(Clone, Debug)]
pub struct SecretSpec {
    pub kind: SecretType,
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
}

impl SecretSpec {
    /// Checks the flags: a type and a name are needed, and the name,
    /// namespace and labels must be what Kubernetes accepts.
    pub fn new(options: &SecretOptions) -> Result<SecretSpec, ClientError> {
        let input = |m: String| ClientError::Input(m);
        let kind = options.kind.ok_or_else(|| {
            input(
                "--format secret needs --secret-type kubeconfig or --secret-type tokenFile".into(),
            )
        })?;
        let name = options
            .name
            .clone()
            .ok_or_else(|| input("--format secret needs --secret-name".into()))?;
        if !names::is_dns_subdomain(&name) {
            return Err(input(format!(
                "--secret-name {name:?}: {} (at most 253 characters)",
                names::DNS_SUBDOMAIN_RULE
            )));
        }
        if let Some(ns) = &options.namespace {
            if !names::is_dns_label(ns) {
                return Err(input(format!(
                    "--secret-namespace {ns:?}: {} (at most 63 characters)",
                    names::DNS_LABEL_RULE
                )));
            }
        }
        let mut labels = BTreeMap::new();
        for given in &options.labels {
            let Some((key, value)) = given.split_once('=') else {
                return Err(input(format!("--label {given:?}: write it as KEY=VALUE")));
            };
            if !names::is_qualified_name(key) {
                return Err(input(format!(
                    "--label {given:?}: the key {key:?} is not valid: {}",
                    names::QUALIFIED_NAME_RULE
                )));
            }
            if !names::is_label_value(value) {
                return Err(input(format!(
                    "--label {given:?}: the value {value:?} is not valid: {}",
                    names::LABEL_VALUE_RULE
                )));
            }
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(input(format!("--label: the key {key:?} is given twice")));
            }
        }
        Ok(SecretSpec {
            kind,
            name,
            namespace: options.namespace.clone(),
            labels,
        })
    }

    /// The Secret, as JSON (which is YAML too) that `kubectl apply -f`
    /// reads. `kubeconfig` is the rendered kubeconfig, for that type.
    pub fn render(
        &self,
        token: &str,
        target: &Target,
        kubeconfig: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let mut data = BTreeMap::new();
        match self.kind {
            SecretType::Kubeconfig => {
                data.insert("kubeconfig".to_owned(), ByteString(kubeconfig.to_vec()));
            }
            SecretType::TokenFile => {
                let (host, port, ca) = token_file_server(target)?;
                for (key, value) in [
                    ("TOKEN_FILE", token.as_bytes().to_vec()),
                    ("KUBERNETES_SERVICE_HOST", host.into_bytes()),
                    ("KUBERNETES_SERVICE_PORT", port.to_string().into_bytes()),
                    ("KUBERNETES_CA_DATA", ca),
                ] {
                    data.insert(key.to_owned(), ByteString(value));
                }
            }
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: self.namespace.clone(),
                labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        };
        let mut out = serde_json::to_vec_pretty(&secret)
            .map_err(|e| ClientError::Input(format!("cannot write the Secret: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Checks what the target alone decides, before anything is minted.
    pub fn check(&self, target: &Target) -> Result<(), ClientError> {
        match self.kind {
            SecretType::Kubeconfig => Ok(()),
            SecretType::TokenFile => token_file_server(target).map(drop),
        }
    }
}

/// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and
/// `KUBERNETES_CA_DATA` for `target`.
fn token_file_server(target: &Target) -> Result<(String, u16, Vec<u8>), ClientError> {
    let (host, port) = target.host_and_port("--secret-type tokenFile")?;
    // The DOCA pod mounts KUBERNETES_CA_DATA as ca.crt: a Secret without the
    // key would leave the pod unable to start.
    let ca = target.ca_pem.clone().ok_or_else(|| {
        ClientError::Input(format!(
            "--secret-type tokenFile needs the API server's CA for KUBERNETES_CA_DATA: pass {}",
            if target.flag == "--server" {
                "--ca-file (or --target-server with --target-ca)"
            } else {
                "--target-ca"
            }
        ))
    })?;
    Ok((host, port, ca))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::target::TargetOptions;

    fn options() -> SecretOptions {
        SecretOptions {
            kind: Some(SecretType::TokenFile),
            name: Some("dpu-01-credential".into()),
            namespace: Some("default".into()),
            labels: vec!["dpuservice=dpu-01".into()],
        }
    }

    fn err(o: SecretOptions) -> String {
        SecretSpec::new(&o).unwrap_err().to_string()
    }

    #[test]
    fn token_file_secret_has_exactly_the_doca_keys_encoded_once() {
        let target = Target::new(
            &TargetOptions {
                server: Some("https://developer.com:19443".into()),
                ca_file: None,
            },
            "https://issuer/c/demo",
            None,
        )
        .unwrap();
        let target = Target {
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----\n".to_vec()),
            ..target
        };
        let out = SecretSpec::new(&options())
            .unwrap()
            .render("a.b.c", &target, b"")
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "dpu-01-credential",
                    "namespace": "default",
                    "labels": {"dpuservice": "dpu-01"}
                },
                "type": "Opaque",
                "data": {
                    "TOKEN_FILE": "YS5iLmM=",
                    // The seed's own example values: https://developer.com, 19443.
                    "KUBERNETES_SERVICE_HOST": "aHR0cHM6Ly9kZXZlbG9wZXIuY29t",
                    "KUBERNETES_SERVICE_PORT": "MTk0NDM=",
                    "KUBERNETES_CA_DATA": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
                }
            })
        );
        // Without a CA there is no KUBERNETES_CA_DATA to give: refused.
        let target = Target {
            ca_pem: None,
            ..target
        };
        let e = SecretSpec::new(&options())
            .unwrap()
            .render("a.b.c", &target, b"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs the API server's CA") && e.contains("--target-ca"),
            "{e}"
        );
    }

    #[test]
    fn bad_names_and_labels_are_refused_with_the_rule() {
        let cases: [(SecretOptions, &str); 9] = [
            (
                SecretOptions {
                    kind: None,
                    ..options()
                },
                "needs --secret-type",
            ),
            (
                SecretOptions {
                    name: None,
                    ..options()
                },
                "needs --secret-name",
            ),
            (
                SecretOptions {
                    name: Some("Bad_Name".into()),
                    ..options()
                },
                "--secret-name \"Bad_Name\": a lowercase RFC 1123 subdomain",
            ),
            (
                SecretOptions {
                    name: Some("a".repeat(254)),
                    ..options()
                },
                "at most 253",
            ),
            (
                SecretOptions {
                    namespace: Some("a.b".into()),
                    ..options()
                },
                "--secret-namespace \"a.b\": a lowercase RFC 1123 label",
            ),
            (
                SecretOptions {
                    labels: vec!["novalue".into()],
                    ..options()
                },
                "--label \"novalue\": write it as KEY=VALUE",
            ),
            (
                SecretOptions {
                    labels: vec!["-k=v".into()],
                    ..options()
                },
                "the key \"-k\" is not valid: a valid label key",
            ),
            (
                SecretOptions {
                    labels: vec!["k=a b".into()],
                    ..options()
                },
                "the value \"a b\" is not valid: a valid label value",
            ),
            (
                SecretOptions {
                    labels: vec!["k=1".into(), "k=2".into()],
                    ..options()
                },
                "the key \"k\" is given twice",
            ),
        ];
        for (o, says) in cases {
            let e = err(o);
            assert!(e.contains(says), "{says}: {e}");
        }
        // An empty label value is valid, as in Kubernetes.
        assert!(SecretSpec::new(&SecretOptions {
            labels: vec!["k=".into()],
            ..options()
        })
        .is_ok());
    }
}
