//! The role side: what each provider holds about who may exchange a token
//! (an AWS trust policy, a GCP provider's attribute mapping and condition,
//! an Azure federated credential, a Vault role), read from the JSON each
//! provider's own tools print, and evaluated against a token.
//!
//! Pure: files in, verdicts out; nothing is fetched.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod vault;

use std::path::Path;

use serde_json::Value;

use super::super::{read_flag_file, ClientError};
use super::RoleFiles;

/// The role files given, parsed.
#[derive(Debug, Default)]
pub struct Roles {
    pub aws: Option<aws::TrustPolicy>,
    pub gcp: Option<gcp::ProviderConfig>,
    pub azure: Option<azure::Credential>,
    pub vault: Option<vault::Role>,
}

impl Roles {
    pub fn load(files: &RoleFiles) -> Result<Roles, ClientError> {
        fn load<T>(
            flag: &str,
            path: Option<&Path>,
            parse: fn(&Value) -> Result<T, String>,
        ) -> Result<Option<T>, ClientError> {
            let Some(path) = path else { return Ok(None) };
            let bytes = read_flag_file(flag, path)?;
            let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Input(format!("{flag} {}: not JSON: {e}", path.display()))
            })?;
            // `vault read -format=json` wraps what it read in "data".
            let json = match json.get("data") {
                Some(data) if data.is_object() => data.clone(),
                _ => json,
            };
            parse(&json)
                .map(Some)
                .map_err(|e| ClientError::Input(format!("{flag} {}: {e}", path.display())))
        }
        Ok(Roles {
            aws: load(
                "--aws-trust-policy",
                files.aws_trust_policy.as_deref(),
                aws::TrustPolicy::parse,
            )?,
            gcp: load(
                "--gcp-provider",
                files.gcp_provider.as_deref(),
                gcp::ProviderConfig::parse,
            )?,
            azure: load(
                "--azure-credential",
                files.azure_credential.as_deref(),
                azure::Credential::parse,
            )?,
            vault: load(
                "--vault-role",
                files.vault_role.as_deref(),
                vault::Role::parse,
            )?,
        })
    }
}

/// A JSON string or array of strings as a list; `None` for anything else.
pub(crate) fn strings(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}
