//! `workload-issuer federation print`: the trust policy, or the gcloud, az
//! and vault commands, that make a provider trust one service account of a
//! cluster, built from the configuration (the cluster's issuer and
//! algorithm; its audiences for a note when tokens minted without
//! `--audience` would not match) so they agree with what `federation
//! check` checks.
//!
//! Reads `config` (the bottom layer) and the Kubernetes name rules; nothing
//! of the server side.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::rules::aws::{provider_name, DEFAULT_AUDIENCE as AWS_AUDIENCE};
use super::rules::azure::DEFAULT_AUDIENCE as AZURE_AUDIENCE;
use super::Provider;
use crate::config::{Algorithm, ClusterConfig, Config, Overrides};
use crate::k8s::names::{is_dns_label, is_dns_subdomain};

/// The audience `federation print vault` binds when the cluster names none
/// of its own.
pub const VAULT_AUDIENCE: &str = "vault";

#[derive(Clone, Debug)]
pub struct PrintOptions {
    pub provider: Provider,
    pub config: Option<PathBuf>,
    pub cluster: String,
    pub namespace: String,
    pub service_account: String,
    /// The audience to register; the provider's usual one when `None`
    /// (with a note when the cluster mints another by default).
    pub audience: Option<String>,
    /// The AWS account holding the role (for the trust policy's principal).
    pub aws_account: Option<String>,
}

/// `workload-issuer federation print`: exit 2 for bad input.
pub fn print(options: PrintOptions) -> ExitCode {
    let config = match Config::load(options.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match render(&config, &options) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `print` writes for `options` under `config`.
pub fn render(config: &Config, options: &PrintOptions) -> Result<String, String> {
    let cluster = config.cluster(&options.cluster).ok_or_else(|| {
        let ids: Vec<&str> = config.clusters.iter().map(|c| c.id.as_str()).collect();
        format!(
            "--cluster: no cluster has id {:?}; the configured clusters are: {}",
            options.cluster,
            ids.join(", ")
        )
    })?;
    if !is_dns_label(&options.namespace) {
        return Err(format!(
            "--namespace {:?}: not a Kubernetes namespace name",
            options.namespace
        ));
    }
    if !is_dns_subdomain(&options.service_account) {
        return Err(format!(
            "--service-account {:?}: not a Kubernetes service account name",
            options.service_account
        ));
    }
    let subject = format!(
        "system:serviceaccount:{}:{}",
        options.namespace, options.service_account
    );
    let what = Target {
        cluster,
        subject: &subject,
        audience: options.audience.as_deref(),
        options,
    };
    match options.provider {
        Provider::Aws => what.aws(),
        Provider::Gcp => Ok(what.gcp()),
        Provider::Azure => what.azure(),
        Provider::Vault => Ok(what.vault()),
    }
}

struct Target<'a> {
    cluster: &'a ClusterConfig,
    subject: &'a str,
    /// `--audience`; each provider's usual one when `None`.
    audience: Option<&'a str>,
    options: &'a PrintOptions,
}

impl Target<'_> {
    fn or<'s>(&'s self, usual: &'s str) -> &'s str {
        self.audience.unwrap_or(usual)
    }

    /// A warning, when the cluster's tokens carry another audience unless
    /// minted with `--audience`: the registration alone would not admit
    /// them.
    fn audience_note(&self, registered: &str) -> Option<String> {
        let auds = &self.cluster.audiences;
        (!auds.iter().any(|a| a == registered)).then(|| {
            format!(
                "# cluster {:?} mints aud {auds:?} when a request names none: \
                 mint with --audience {registered}\n",
                self.cluster.id
            )
        })
    }

    fn header(&self, provider: &str) -> String {
        format!(
            "# {provider}: trust {} from cluster {:?} (issuer {})\n",
            self.subject, self.cluster.id, self.cluster.issuer
        )
    }

    fn aws(&self) -> Result<String, String> {
        let account = self.options.aws_account.as_deref().ok_or(
            "federation print aws needs --aws-account, the 12-digit account of the role \
             (aws sts get-caller-identity --query Account --output text)",
        )?;
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "--aws-account {account:?}: not a 12-digit AWS account id"
            ));
        }
        let provider = provider_name(&self.cluster.issuer);
        let aud = self.or(AWS_AUDIENCE);
        // JSON has no comments: the note goes to standard error.
        if let Some(note) = self.audience_note(aud) {
            eprint!("{note}");
        }
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": {"Federated": format!("arn:aws:iam::{account}:oidc-provider/{provider}")},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {"StringEquals": {
                    format!("{provider}:sub"): self.subject,
                    format!("{provider}:aud"): aud,
                }}
            }]
        });
        let text = serde_json::to_string_pretty(&policy).map_err(|e| e.to_string())?;
        Ok(format!("{text}\n"))
    }

    fn gcp(&self) -> String {
        let c = self.cluster;
        let mut out = self.header("Google Cloud workload identity federation");
        out.push_str(&format!(
            "PROJECT_ID=\"${{PROJECT_ID:?set PROJECT_ID}}\" PROJECT_NUMBER=\"${{PROJECT_NUMBER:?set PROJECT_NUMBER}}\"\n\
             POOL=\"${{POOL:-workloads}}\" PROVIDER=\"${{PROVIDER:-{}}}\"\n\
             gcloud iam workload-identity-pools create \"$POOL\" --project=\"$PROJECT_ID\" --location=global\n\
             gcloud iam workload-identity-pools providers create-oidc \"$PROVIDER\" --project=\"$PROJECT_ID\" \\\n  \
             --location=global --workload-identity-pool=\"$POOL\" \\\n  \
             --issuer-uri={}{} \\\n  \
             --attribute-mapping=\"google.subject=assertion.sub,attribute.namespace=assertion['kubernetes.io']['namespace']\"\n",
            c.id,
            quote(&c.issuer),
            match self.audience {
                Some(a) => format!(" --allowed-audiences={}", quote(a)),
                None => String::new(),
            },
        ));
        let pool = "//iam.googleapis.com/projects/$PROJECT_NUMBER/locations/global/workloadIdentityPools/$POOL";
        match self.audience {
            Some(a) => out.extend(self.audience_note(a)),
            // Without allowed audiences, the provider's own name is the
            // audience (the cluster's cannot be it).
            None => out.push_str(&format!(
                "# tokens for it: --audience \"https:{pool}/providers/$PROVIDER\"\n"
            )),
        }
        out.push_str(&format!(
            "gcloud projects add-iam-policy-binding \"$PROJECT_ID\" \\\n  \
             --role=\"${{ROLE:?set ROLE, such as roles/storage.objectViewer}}\" \\\n  \
             --member=\"principal:{pool}/subject/{}\"\n",
            self.subject
        ));
        out
    }

    fn azure(&self) -> Result<String, String> {
        let c = self.cluster;
        if c.key_spec.algorithm() != Algorithm::Rs256 {
            return Err(format!(
                "cluster {:?} signs with {}: Entra ID takes RS256 only; give Azure a cluster \
                 with algorithm = \"RS256\"",
                c.id,
                c.key_spec.algorithm()
            ));
        }
        let aud = self.or(AZURE_AUDIENCE);
        // Credential names: letters, digits, '-' and '_', at most 120.
        let name: String = format!(
            "{}-{}-{}",
            c.id, self.options.namespace, self.options.service_account
        )
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '_' {
                ch
            } else {
                '-'
            }
        })
        .take(120)
        .collect();
        let mut out = self.header("Azure (Entra ID) federated credential");
        out.push_str(&format!(
            "RESOURCE_GROUP=\"${{RESOURCE_GROUP:?set RESOURCE_GROUP}}\" IDENTITY=\"${{IDENTITY:-{name}}}\"\n\
             az identity create -g \"$RESOURCE_GROUP\" -n \"$IDENTITY\"\n\
             az identity federated-credential create -g \"$RESOURCE_GROUP\" --identity-name \"$IDENTITY\" \\\n  \
             --name {} --issuer {} \\\n  \
             --subject {} --audiences {}\n",
            quote(&name),
            quote(&c.issuer),
            quote(self.subject),
            quote(aud)
        ));
        out.extend(self.audience_note(aud));
        Ok(out)
    }

    fn vault(&self) -> String {
        let c = self.cluster;
        let role = format!(
            "{}-{}",
            self.options.namespace, self.options.service_account
        );
        let algs = match c.key_spec.algorithm() {
            // Vault verifies RS256 only unless told otherwise.
            Algorithm::Rs256 => String::new(),
            other => format!(" jwt_supported_algs={other}"),
        };
        let mut out = self.header("HashiCorp Vault JWT auth");
        out.push_str(&format!(
            "vault auth enable jwt   # once; fails harmlessly when already enabled\n\
             vault write auth/jwt/config oidc_discovery_url={0} bound_issuer={0}{algs}\n\
             vault write auth/jwt/role/{1} role_type=jwt user_claim=sub \\\n  \
             bound_audiences={2} bound_subject={3} \\\n  \
             token_policies={1} token_ttl=1h\n",
            quote(&c.issuer),
            quote(&role),
            quote(self.or(VAULT_AUDIENCE)),
            quote(self.subject),
        ));
        out.extend(self.audience_note(self.or(VAULT_AUDIENCE)));
        out
    }
}

/// `s` as one shell word: bare when it holds only safe characters, else in
/// single quotes.
fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:@,=+%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(
            "test",
            &format!(
                "public_url = \"https://oidc.example.com\"\nkeys_dir = \"/nonexistent\"\n\
                 [[clusters]]\nid = \"prod\"\nalgorithm = \"RS256\"\n{extra}\n\
                 [[clusters]]\nid = \"edge\"\nalgorithm = \"ES256\"\n"
            ),
            &Overrides::default(),
        )
        .unwrap()
    }

    fn options(provider: Provider, cluster: &str) -> PrintOptions {
        PrintOptions {
            provider,
            config: None,
            cluster: cluster.into(),
            namespace: "ws-1234".into(),
            service_account: "default".into(),
            audience: None,
            aws_account: Some("111122223333".into()),
        }
    }

    #[test]
    fn the_aws_trust_policy_names_the_issuer_subject_and_audience() {
        let text = render(&config(""), &options(Provider::Aws, "prod")).unwrap();
        let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
        let s = &policy["Statement"][0];
        assert_eq!(
            s["Principal"]["Federated"],
            "arn:aws:iam::111122223333:oidc-provider/oidc.example.com/c/prod"
        );
        let cond = &s["Condition"]["StringEquals"];
        assert_eq!(
            cond["oidc.example.com/c/prod:sub"],
            "system:serviceaccount:ws-1234:default"
        );
        assert_eq!(cond["oidc.example.com/c/prod:aud"], "sts.amazonaws.com");
        let mut no_account = options(Provider::Aws, "prod");
        no_account.aws_account = None;
        assert!(render(&config(""), &no_account)
            .unwrap_err()
            .contains("--aws-account"));
    }

    #[test]
    fn the_cluster_audiences_and_algorithm_shape_the_commands() {
        let c = config("audiences = [\"a1\", \"a2\"]");
        let gcp = render(&c, &options(Provider::Gcp, "prod")).unwrap();
        assert!(!gcp.contains("--allowed-audiences"), "{gcp}");
        assert!(
            gcp.contains("# tokens for it: --audience \"https://iam.googleapis.com/projects/"),
            "{gcp}"
        );
        assert!(
            gcp.contains("--issuer-uri=https://oidc.example.com/c/prod"),
            "{gcp}"
        );
        let mut a1 = options(Provider::Gcp, "prod");
        a1.audience = Some("a1".into());
        let gcp = render(&c, &a1).unwrap();
        assert!(gcp.contains("--allowed-audiences=a1 "), "{gcp}");
        assert!(!gcp.contains("mints aud"), "{gcp}");
        let azure = render(&c, &options(Provider::Azure, "prod")).unwrap();
        assert!(
            azure.contains(
                "mints aud [\"a1\", \"a2\"] when a request names none: \
                 mint with --audience api://AzureADTokenExchange"
            ),
            "{azure}"
        );
        let err = render(&c, &options(Provider::Azure, "edge")).unwrap_err();
        assert!(err.contains("RS256 only"), "{err}");
        let vault = render(&c, &options(Provider::Vault, "edge")).unwrap();
        assert!(vault.contains("jwt_supported_algs=ES256"), "{vault}");
        assert!(vault.contains("bound_audiences=vault"), "{vault}");
        let azure = render(&config(""), &options(Provider::Azure, "prod")).unwrap();
        assert!(
            azure.contains("--audiences api://AzureADTokenExchange"),
            "{azure}"
        );
        let mut bad = options(Provider::Vault, "prod");
        bad.namespace = "Not_A_Namespace".into();
        assert!(render(&c, &bad).unwrap_err().contains("--namespace"));
        assert!(render(&c, &options(Provider::Vault, "nope"))
            .unwrap_err()
            .contains("prod, edge"));
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(quote("https://a/b"), "https://a/b");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
