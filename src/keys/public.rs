//! Public keys: parsed from a PEM file (the keys a `publish_only` cluster's
//! kube-apiserver signs with, imported by hand) or taken from a private key
//! (`keys::material`); their kid, JWK and signature check.
//!
//! Public material only: no private-key type is touched here. A private key
//! handed in by mistake is recognised by its PEM label alone and refused.
//!
//! The kid is computed the Kubernetes way over the key re-encoded as Go's
//! `x509.MarshalPKIXPublicKey` writes it (pkg/serviceaccount/jwt.go,
//! keyIDFromPublicKey), so the kid of an imported `sa.pub` is the one its
//! kube-apiserver puts in the tokens it signs, whatever form the file has.

use aws_lc_rs::signature::{
    UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::{DecodeRsaPublicKey as _, EncodeRsaPublicKey as _};
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
use rsa::pkcs8::EncodePublicKey as _;
use rsa::traits::PublicKeyParts as _;

use super::jwk::{kid_from_spki_der, PublicJwk};
use crate::config::{Algorithm, KeySpec, RSA_BITS};

/// Why a public key was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    #[error(
        "this is a private key (PEM \"{0}\"), not a public key: give only the public half \
         (`openssl pkey -in sa.key -pubout -out sa.pub`); the private key of a cluster that \
         signs its own tokens stays with its kube-apiserver"
    )]
    Private(String),
    #[error("not a PEM document: {0}")]
    Pem(String),
    #[error(
        "the file holds {0} PEM blocks; import one public key at a time (split the file, one \
         `keys import` per key)"
    )]
    Several(usize),
    #[error(
        "PEM \"{0}\" is not a public key: expected \"PUBLIC KEY\" (PKIX, as `openssl pkey -pubout` \
         writes it) or \"RSA PUBLIC KEY\" (PKCS#1)"
    )]
    Label(String),
    #[error("not a valid {what} public key: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("an EC key on curve {0}: only P-256 (ES256) keys are supported")]
    Curve(String),
    #[error("a key of algorithm {0}: only RSA (RS256) and EC P-256 (ES256) keys are supported")]
    Algorithm(String),
    #[error("an RSA key of {0} bits: only 2048, 3072 or 4096 bits are accepted")]
    RsaSize(usize),
}

/// A public key as this issuer publishes it: algorithm, kid, and its PKIX
/// DER, from which the JWK and the encoding aws-lc-rs verifies signatures
/// with are read when asked for (a server with 10,000 clusters holds tens of
/// thousands of these; the JWK is serialized once per key-set change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    alg: Algorithm,
    kid: String,
    bits: u32,
    /// The PKIX SubjectPublicKeyInfo DER, as Go marshals it.
    spki: Vec<u8>,
    /// Where in `spki` the subjectPublicKey's bits start, which end it: RSA,
    /// the PKCS#1 RSAPublicKey DER; EC, the uncompressed SEC1 point.
    raw_at: usize,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";

/// Names of curves and algorithms an imported key may come with, for the
/// message that refuses them.
fn oid_name(oid: &str) -> &str {
    match oid {
        "1.2.840.10045.3.1.7" => "P-256",
        "1.3.132.0.34" => "P-384",
        "1.3.132.0.35" => "P-521",
        "1.3.132.0.10" => "secp256k1",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.10040.4.1" => "DSA",
        "1.2.840.113549.1.1.10" => "RSASSA-PSS",
        other => other,
    }
}

impl PublicKey {
    /// Parses one PEM public key: "PUBLIC KEY" (PKIX; RSA or EC P-256) or
    /// "RSA PUBLIC KEY" (PKCS#1).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, PublicKeyError> {
        let text = String::from_utf8_lossy(pem);
        let blocks = text.matches("-----BEGIN ").count();
        if blocks > 1 {
            return Err(PublicKeyError::Several(blocks));
        }
        // Judged by the label before anything is decoded: a private key is
        // refused without being parsed.
        if let Some(label) = text
            .split("-----BEGIN ")
            .nth(1)
            .and_then(|rest| rest.split("-----").next())
        {
            if label.contains("PRIVATE KEY") {
                return Err(PublicKeyError::Private(label.to_owned()));
            }
        }
        let (label, der) = rsa::pkcs8::der::pem::decode_vec(pem)
            .map_err(|e| PublicKeyError::Pem(e.to_string()))?;
        match label {
            "PUBLIC KEY" => PublicKey::from_spki_der(&der),
            "RSA PUBLIC KEY" => {
                let key = rsa::RsaPublicKey::from_pkcs1_der(&der).map_err(|e| {
                    PublicKeyError::Malformed {
                        what: "PKCS#1 RSA",
                        reason: e.to_string(),
                    }
                })?;
                PublicKey::rsa(&key)
            }
            other => Err(PublicKeyError::Label(other.to_owned())),
        }
    }

    /// Parses a PKIX SubjectPublicKeyInfo DER of an RSA or EC P-256 key.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, PublicKeyError> {
        let info =
            SubjectPublicKeyInfoRef::try_from(der).map_err(|e| PublicKeyError::Malformed {
                what: "PKIX",
                reason: e.to_string(),
            })?;
        let oid = info.algorithm.oid.to_string();
        match oid.as_str() {
            OID_RSA => {
                let key = rsa::RsaPublicKey::from_public_key_der(der).map_err(|e| {
                    PublicKeyError::Malformed {
                        what: "RSA",
                        reason: e.to_string(),
                    }
                })?;
                PublicKey::rsa(&key)
            }
            OID_EC => {
                let curve = info
                    .algorithm
                    .parameters_oid()
                    .map(|c| c.to_string())
                    .map_err(|e| PublicKeyError::Malformed {
                        what: "EC",
                        reason: format!("no named curve: {e}"),
                    })?;
                if curve != "1.2.840.10045.3.1.7" {
                    return Err(PublicKeyError::Curve(oid_name(&curve).to_owned()));
                }
                let key = p256::PublicKey::from_public_key_der(der).map_err(|e| {
                    PublicKeyError::Malformed {
                        what: "EC P-256",
                        reason: e.to_string(),
                    }
                })?;
                PublicKey::p256(&key)
            }
            other => Err(PublicKeyError::Algorithm(oid_name(other).to_owned())),
        }
    }

    fn rsa(key: &rsa::RsaPublicKey) -> Result<PublicKey, PublicKeyError> {
        let bits = key.n().bits();
        if !RSA_BITS.contains(&(bits as u32)) {
            return Err(PublicKeyError::RsaSize(bits));
        }
        let encode = |e: &dyn std::fmt::Display| PublicKeyError::Malformed {
            what: "RSA",
            reason: e.to_string(),
        };
        let spki = key.to_public_key_der().map_err(|e| encode(&e))?;
        let raw = key.to_pkcs1_der().map_err(|e| encode(&e))?;
        PublicKey::new(
            Algorithm::Rs256,
            bits as u32,
            spki.as_bytes(),
            raw.as_bytes(),
        )
    }

    fn p256(key: &p256::PublicKey) -> Result<PublicKey, PublicKeyError> {
        let spki = key
            .to_public_key_der()
            .map_err(|e| PublicKeyError::Malformed {
                what: "EC P-256",
                reason: e.to_string(),
            })?;
        let point = key.to_encoded_point(false);
        if point.x().is_none() || point.y().is_none() {
            return Err(PublicKeyError::Malformed {
                what: "EC P-256",
                reason: "the point at infinity".into(),
            });
        }
        PublicKey::new(Algorithm::Es256, 256, spki.as_bytes(), point.as_bytes())
    }

    /// `raw` is the subjectPublicKey of `spki`: the last bytes of its DER.
    /// Refused unless the JWK can be read from it later.
    fn new(alg: Algorithm, bits: u32, spki: &[u8], raw: &[u8]) -> Result<Self, PublicKeyError> {
        let readable = match alg {
            Algorithm::Es256 => raw.len() == 65 && raw[0] == 4,
            Algorithm::Rs256 => rsa::pkcs1::RsaPublicKey::try_from(raw).is_ok(),
        };
        if !readable || !spki.ends_with(raw) {
            return Err(PublicKeyError::Malformed {
                what: "PKIX",
                reason: "the public key is not where its encoding ends".into(),
            });
        }
        Ok(PublicKey {
            alg,
            kid: kid_from_spki_der(spki),
            bits,
            spki: spki.to_vec(),
            raw_at: spki.len() - raw.len(),
        })
    }

    /// RSA: the PKCS#1 RSAPublicKey DER; EC: the uncompressed SEC1 point.
    fn raw(&self) -> &[u8] {
        &self.spki[self.raw_at..]
    }

    /// The key as a PEM "PUBLIC KEY" (PKIX), as it is kept in the keys dir.
    pub fn to_pem(&self) -> String {
        rsa::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &self.spki)
            .unwrap_or_default()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK (RFC 7517 §4), built from the key's encoding.
    pub fn public_jwk(&self) -> PublicJwk {
        let raw = self.raw();
        match self.alg {
            // 0x04 || x || y, each coordinate 32 bytes (checked when made).
            Algorithm::Es256 => PublicJwk::ec_p256(&self.kid, &raw[1..33], &raw[33..65]),
            Algorithm::Rs256 => match rsa::pkcs1::RsaPublicKey::try_from(raw) {
                Ok(key) => PublicJwk::rsa(
                    &self.kid,
                    key.modulus.as_bytes(),
                    key.public_exponent.as_bytes(),
                ),
                // Not reached: `new` refuses an encoding that does not decode.
                Err(_) => PublicJwk::rsa(&self.kid, &[], &[]),
            },
        }
    }

    /// RSA modulus size, or 256 for P-256.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub fn spec(&self) -> KeySpec {
        match self.alg {
            Algorithm::Rs256 => KeySpec::Rsa { bits: self.bits },
            Algorithm::Es256 => KeySpec::P256,
        }
    }

    /// The PKIX SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Checks a JWS signature (RS256, or ES256 in the fixed R||S form of
    /// RFC 7518 §3.4) made by this key's private half.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match self.alg {
            Algorithm::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
            Algorithm::Es256 => &ECDSA_P256_SHA256_FIXED,
        };
        UnparsedPublicKey::new(alg, self.raw())
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &[u8] = include_bytes!("../../tests/vectors/kubernetes-kid-rsa.pub.pem");
    const VECTOR_KID: &str = "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU";

    #[test]
    fn a_pkix_rsa_key_gets_the_kubernetes_kid() {
        let key = PublicKey::from_pem(VECTOR).unwrap();
        assert_eq!(key.kid(), VECTOR_KID);
        assert_eq!(key.algorithm(), Algorithm::Rs256);
        assert_eq!(key.public_jwk().kid(), VECTOR_KID);
        // Written back as it is kept on disk, it reads as the same key.
        assert_eq!(PublicKey::from_pem(key.to_pem().as_bytes()).unwrap(), key);
    }

    #[test]
    fn the_same_rsa_key_in_pkcs1_gets_the_same_kid() {
        let pkix = PublicKey::from_pem(VECTOR).unwrap();
        let (_, der) = rsa::pkcs8::der::pem::decode_vec(VECTOR).unwrap();
        let rsa = rsa::RsaPublicKey::from_public_key_der(&der).unwrap();
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
        let key = PublicKey::from_pem(pkcs1.as_bytes()).unwrap();
        assert_eq!(key, pkix);
    }

    #[test]
    fn an_ec_key_verifies_what_its_private_half_signed() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::DecodePrivateKey as _;
        let (_, private) = crate::keys::material::SigningKey::generate(KeySpec::P256).unwrap();
        let secret =
            p256::SecretKey::from_pkcs8_pem(std::str::from_utf8(private.as_bytes()).unwrap())
                .unwrap();
        let pem = secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let key = PublicKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Es256);
        let der = secret.public_key().to_public_key_der().unwrap();
        assert_eq!(key.kid(), kid_from_spki_der(der.as_bytes()));
        let signer = p256::ecdsa::SigningKey::from(&secret);
        let sig: p256::ecdsa::Signature = signer.sign(b"header.claims");
        assert!(key.verify(b"header.claims", &sig.to_bytes()));
        assert!(!key.verify(b"header.claimz", &sig.to_bytes()));
    }

    #[test]
    fn what_is_not_one_public_key_of_a_supported_kind_is_refused_with_the_reason() {
        let private = crate::keys::material::SigningKey::generate(KeySpec::P256)
            .unwrap()
            .1;
        let two = [VECTOR, VECTOR].concat();
        // (Other curves and RSA sizes: tests/it/publish_only.rs, with openssl.)
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (private.as_bytes().to_vec(), "this is a private key (PEM \"PRIVATE KEY\")"),
            (
                b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n".to_vec(),
                "this is a private key (PEM \"RSA PRIVATE KEY\")",
            ),
            (
                b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n".to_vec(),
                "this is a private key",
            ),
            (b"hello".to_vec(), "not a PEM document"),
            (two, "holds 2 PEM blocks"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                "PEM \"CERTIFICATE\" is not a public key",
            ),
            (
                b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n".to_vec(),
                "algorithm Ed25519",
            ),
            (
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
                "not a valid PKIX public key",
            ),
        ];
        for (pem, says) in cases {
            let err = PublicKey::from_pem(&pem).unwrap_err().to_string();
            assert!(err.contains(says), "{says:?}: {err}");
        }
    }
}
