//! Name and audience rules: RFC 1123 labels and subdomains as Kubernetes
//! checks object names (k8s.io/apimachinery `pkg/util/validation`), with the
//! messages kube-apiserver prints for them, and the bounds on an audience.
//!
//! Pure functions over strings; imports nothing of the crate.

/// Kubernetes' message for a name that is not an RFC 1123 label
/// (apimachinery `validation.go`, `dns1123LabelErrMsg`).
pub const DNS_LABEL_RULE: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character";

/// Kubernetes' message for a name that is not an RFC 1123 subdomain
/// (apimachinery `validation.go`, `dns1123SubdomainErrorMsg`).
pub const DNS_SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
    alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";

/// RFC 1123 label, as Kubernetes checks namespace names: 1 to 63 lowercase
/// letters, digits or '-', starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain, as Kubernetes checks most object names (service
/// accounts, pods, secrets): at most 253 characters of dot-separated labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Longest audience accepted, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 1024;

/// What is wrong with an audience value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long; at most {MAX_AUDIENCE_LEN} are allowed")]
    TooLong(usize),
    #[error("must not contain control characters")]
    Control,
}

/// Checks one audience value: non-empty, bounded, printable.
pub fn check_audience(aud: &str) -> Result<(), AudienceError> {
    if aud.is_empty() {
        return Err(AudienceError::Empty);
    }
    if aud.len() > MAX_AUDIENCE_LEN {
        return Err(AudienceError::TooLong(aud.len()));
    }
    if aud.chars().any(char::is_control) {
        return Err(AudienceError::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_checked_like_kubernetes() {
        assert!(is_dns_label("ws-123"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("my.sa-1"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("../etc"));
    }

    #[test]
    fn audiences_are_bounded_and_printable() {
        assert!(check_audience("sts.amazonaws.com").is_ok());
        assert_eq!(
            check_audience("").unwrap_err().to_string(),
            "must not be empty"
        );
        assert!(check_audience(&"a".repeat(MAX_AUDIENCE_LEN)).is_ok());
        assert!(check_audience(&"a".repeat(MAX_AUDIENCE_LEN + 1))
            .unwrap_err()
            .to_string()
            .contains("at most 1024"));
        assert_eq!(check_audience("a\nb"), Err(AudienceError::Control));
    }
}
