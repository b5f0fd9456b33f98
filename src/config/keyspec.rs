//! The kinds of signing key a cluster can be configured with, and the JWS
//! algorithm of each: plain data, named by the configuration and used by
//! `keys::material` to generate and load keys.
//!
//! Imports nothing of the crate.

use std::fmt;

/// A JWS signing algorithm this issuer can sign with (RFC 7518 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    // Declared in name order, so sorting algorithms sorts their names too.
    Es256,
    Rs256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Es256 => "ES256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Algorithm::Rs256),
            "ES256" => Some(Algorithm::Es256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of key to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    Rsa { bits: u32 },
    P256,
}

impl KeySpec {
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeySpec::Rsa { .. } => Algorithm::Rs256,
            KeySpec::P256 => Algorithm::Es256,
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Rsa { bits } => write!(f, "RS256 (RSA {bits})"),
            KeySpec::P256 => f.write_str("ES256 (P-256)"),
        }
    }
}

/// The RSA sizes accepted for signing keys.
pub const RSA_BITS: [u32; 3] = [2048, 3072, 4096];
