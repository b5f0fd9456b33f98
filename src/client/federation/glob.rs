//! Wildcard patterns as the providers match them, compiled to anchored
//! regular expressions: AWS `StringLike` (`*` any run of characters, `?`
//! one character) and Vault's `bound_claims_type = "glob"` (`*` only, as
//! its go-glob does).

/// Which wildcards a pattern has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wildcards {
    /// `*` and `?` (AWS IAM `StringLike`).
    StarAndQuestion,
    /// `*` only (Vault's glob).
    Star,
}

/// Whether `value` matches `pattern` in full.
pub fn matches(pattern: &str, value: &str, wildcards: Wildcards) -> bool {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str("(?s:.*)"),
            '?' if wildcards == Wildcards::StarAndQuestion => re.push_str("(?s:.)"),
            _ => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    // Every character outside the wildcards is escaped: the expression
    // always compiles.
    regex::Regex::new(&re).is_ok_and(|r| r.is_match(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_each_provider_documents_them() {
        let aws = Wildcards::StarAndQuestion;
        assert!(matches(
            "system:serviceaccount:ws-*:default",
            "system:serviceaccount:ws-12:default",
            aws
        ));
        assert!(!matches(
            "system:serviceaccount:ws-*:default",
            "system:serviceaccount:ws-12:other",
            aws
        ));
        assert!(matches("a?c", "abc", aws));
        assert!(!matches("a?c", "a?d", aws));
        assert!(!matches("a?c", "abc", Wildcards::Star));
        assert!(matches("a?c", "a?c", Wildcards::Star));
        // Regex characters are literal.
        assert!(matches("a.b(c)", "a.b(c)", aws));
        assert!(!matches("a.b", "axb", aws));
        assert!(!matches("abc", "abcd", aws));
    }
}
