//! Name and audience rules: RFC 1123 labels and subdomains as Kubernetes
//! checks object names, and label keys and values (k8s.io/apimachinery
//! `pkg/util/validation`), with the messages kube-apiserver prints for them,
//! and the bounds on an audience.
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

/// The rule for a label key, after apimachinery's `qualifiedNameErrMsg`
/// with the length limits it states apart.
pub const QUALIFIED_NAME_RULE: &str = "a valid label key must be an optional DNS subdomain \
    prefix and '/', then a name of at most 63 characters that consists of alphanumeric \
    characters, '-', '_' or '.', and starts and ends with an alphanumeric character \
    (such as 'app', 'app.kubernetes.io/name')";

/// The rule for a label value, after apimachinery's `labelValueErrMsg`.
pub const LABEL_VALUE_RULE: &str = "a valid label value must be empty or at most 63 \
    characters that consist of alphanumeric characters, '-', '_' or '.', and start and end \
    with an alphanumeric character";

/// At most 63 alphanumeric characters, '-', '_' or '.', starting and ending
/// with an alphanumeric one: the name part of a label key, and a non-empty
/// label value (apimachinery `IsQualifiedName`, `IsValidLabelValue`).
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label key, as Kubernetes checks it: `[prefix/]name`, the prefix an
/// RFC 1123 subdomain (apimachinery `IsQualifiedName`).
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// A label value, as Kubernetes checks it: empty, or a label name
/// (apimachinery `IsValidLabelValue`).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_name(s)
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
    fn label_keys_and_values_are_checked_like_kubernetes() {
        for good in [
            "app",
            "app.kubernetes.io/name",
            "dpuservice",
            "a_b.c-d",
            "x/y",
        ] {
            assert!(is_qualified_name(good), "{good}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "-a",
            "a-",
            "A_B/c",
            "a/b/c",
            "x/a b",
            &"a".repeat(64),
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        let l = "b".repeat(63);
        let prefix = |last: usize| format!("{l}.{l}.{l}.{}/a", "b".repeat(last));
        assert!(is_qualified_name(&prefix(61))); // a 253-character prefix
        assert!(!is_qualified_name(&prefix(62)));
        for good in ["", "dpu-01", "V1.2_b", &"a".repeat(63)] {
            assert!(is_label_value(good), "{good}");
        }
        for bad in ["-x", "x-", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(!is_label_value(bad), "{bad}");
        }
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
