//! Private key material: generating, loading and signing with one key.
//!
//! This is the only module that touches private-key types. Everything else sees
//! a [`SigningKey`] through its public surface: the kid, the algorithm, the public
//! JWK and `sign`. The key is parsed once, when it is loaded, and kept parsed in
//! memory: signing never re-reads PEM or DER.
//!
//! Signing goes through aws-lc-rs, whose RSA and ECDSA are constant-time (the
//! pure-Rust `rsa` crate carries RUSTSEC-2023-0071); the `rsa` and `p256` crates are
//! used only for the public halves (PKIX encoding, JWK members).

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use rsa::pkcs8::der::pem::LineEnding;
use rsa::pkcs8::der::zeroize::Zeroizing;

use super::jwk::PublicJwk;
use super::public::{PublicKey, PublicKeyError};

pub use crate::config::{Algorithm, KeySpec, RSA_BITS};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM \"PRIVATE KEY\" (PKCS#8) document: {0}")]
    Pem(String),
    #[error("not a PKCS#8 private key: {0}")]
    Pkcs8(String),
    #[error("unsupported key type: only RSA and EC P-256 keys can sign")]
    UnsupportedType,
    #[error("RSA key of {0} bits: only 2048, 3072 or 4096 bits are accepted")]
    RsaSize(usize),
    #[error("the key was rejected by the signer: {0}")]
    Rejected(String),
    #[error("key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
}

enum Private {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A parsed private key, ready to sign, with its public JWK and kid.
///
/// Deliberately neither `Debug`-derived nor `Serialize`: the hand-written `Debug`
/// prints the kid and algorithm only.
pub struct SigningKey {
    private: Private,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.public.algorithm())
            .field("kid", &self.public.kid())
            .field("private", &"<redacted>")
            .finish()
    }
}

/// A PKCS#8 PEM document holding a private key, wiped from memory on drop.
pub struct Pkcs8Pem(Zeroizing<String>);

impl Pkcs8Pem {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Pkcs8Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs8Pem(<redacted>)")
    }
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl SigningKey {
    /// Generates a new key. RSA generation takes tens of milliseconds: call it
    /// off the async threads.
    pub fn generate(spec: KeySpec) -> Result<(SigningKey, Pkcs8Pem), KeyError> {
        let der: Zeroizing<Vec<u8>> = match spec {
            KeySpec::Rsa { bits } => {
                let size = match bits {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    other => return Err(KeyError::RsaSize(other as usize)),
                };
                let pair =
                    aws_lc_rs::rsa::KeyPair::generate(size).map_err(|_| KeyError::Generate)?;
                let der = pair.as_der().map_err(|_| KeyError::Generate)?;
                Zeroizing::new(der.as_ref().to_vec())
            }
            KeySpec::P256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| KeyError::Generate)?;
                let doc = pair.to_pkcs8v1().map_err(|_| KeyError::Generate)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
        };
        let pem = rsa::pkcs8::der::pem::encode_string(PEM_LABEL, LineEnding::LF, &der)
            .map_err(|e| KeyError::Pem(e.to_string()))?;
        let key = SigningKey::from_pkcs8_der(&der)?;
        Ok((key, Pkcs8Pem(Zeroizing::new(pem))))
    }

    /// Parses a PKCS#8 PEM private key (RSA 2048/3072/4096 or EC P-256).
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        let der = pkcs8_der(pem)?;
        SigningKey::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(der)
            .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        let oid = info.algorithm.oid;
        // The public half comes from the same code as an imported public
        // key's, so both get their kid and JWK one way.
        let public = |spki: &[u8]| {
            PublicKey::from_spki_der(spki).map_err(|e| match e {
                PublicKeyError::RsaSize(bits) => KeyError::RsaSize(bits),
                other => KeyError::Pkcs8(other.to_string()),
            })
        };
        if oid == rsa::pkcs1::ALGORITHM_OID {
            let parsed = rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
            let spki = parsed
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
            let public = public(spki.as_bytes())?;
            let pair =
                RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Rejected(e.to_string()))?;
            Ok(SigningKey {
                private: Private::Rsa(pair),
                public,
            })
        } else if oid == p256::elliptic_curve::ALGORITHM_OID {
            // The p256 crate checks the encoding and that the key is on P-256
            // (cheap: no point multiplication); aws-lc-rs derives the public
            // key once, and the JWK and kid come from it.
            p256::SecretKey::from_pkcs8_der(der).map_err(|_| KeyError::UnsupportedType)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                .map_err(|e| KeyError::Rejected(e.to_string()))?;
            let spki = pair
                .public_key()
                .as_der()
                .map_err(|_| KeyError::Rejected("cannot encode the public key".into()))?;
            let public = public(spki.as_ref())?;
            Ok(SigningKey {
                private: Private::Ec(pair),
                public,
            })
        } else {
            Err(KeyError::UnsupportedType)
        }
    }

    /// The public half of a PKCS#8 PEM private key, read without building a
    /// key that signs (no point multiplication, no RSA key check): for a key
    /// that is only published, such as a standby. An EC key file carries its
    /// public key (RFC 5915); one that does not is parsed whole. The private
    /// half is checked against the kid when the key is loaded to sign.
    pub fn public_of_pkcs8_pem(pem: &[u8]) -> Result<PublicKey, KeyError> {
        let der = pkcs8_der(pem)?;
        let info = rsa::pkcs8::PrivateKeyInfo::try_from(der.as_slice())
            .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        let oid = info.algorithm.oid;
        let spki = if oid == rsa::pkcs1::ALGORITHM_OID {
            let key = rsa::pkcs1::RsaPrivateKey::try_from(info.private_key)
                .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
            let public = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(key.modulus.as_bytes()),
                rsa::BigUint::from_bytes_be(key.public_exponent.as_bytes()),
            )
            .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
            public.to_public_key_der()
        } else if oid == p256::elliptic_curve::ALGORITHM_OID {
            let key = sec1::EcPrivateKey::try_from(info.private_key)
                .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
            let Some(point) = key.public_key else {
                return SigningKey::from_pkcs8_der(&der).map(|k| k.public);
            };
            p256::PublicKey::from_sec1_bytes(point)
                .map_err(|_| KeyError::UnsupportedType)?
                .to_public_key_der()
        } else {
            return Err(KeyError::UnsupportedType);
        }
        .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        PublicKey::from_spki_der(spki.as_bytes()).map_err(|e| match e {
            PublicKeyError::RsaSize(bits) => KeyError::RsaSize(bits),
            other => KeyError::Pkcs8(other.to_string()),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public.algorithm()
    }

    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    pub fn public_jwk(&self) -> PublicJwk {
        self.public.public_jwk()
    }

    /// The public half: kid, JWK, and the signature check.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// RSA modulus size, or 256 for P-256.
    pub fn bits(&self) -> u32 {
        self.public.bits()
    }

    pub fn spec(&self) -> KeySpec {
        self.public.spec()
    }

    /// Signs `message` as JWS RS256 (RSASSA-PKCS1-v1_5 with SHA-256) or ES256
    /// (ECDSA P-256 with SHA-256, the fixed 64-byte R||S form of RFC 7518 §3.4).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.private {
            Private::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
            Private::Ec(pair) => {
                let sig = pair
                    .sign(&SystemRandom::new(), message)
                    .map_err(|_| KeyError::Sign)?;
                Ok(sig.as_ref().to_vec())
            }
        }
    }
}

impl SigningKey {
    /// Checks a JWS signature made by this key (for TokenReview): the public
    /// half only, in constant time as aws-lc-rs does it.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.public.verify(message, signature)
    }
}

/// The DER inside a PKCS#8 PEM private key, held in memory that is wiped
/// when dropped; any other label is refused.
fn pkcs8_der(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let (label, der) =
        rsa::pkcs8::der::pem::decode_vec(pem).map_err(|e| KeyError::Pem(e.to_string()))?;
    let der = Zeroizing::new(der);
    if label != PEM_LABEL {
        return Err(KeyError::Pem(format!(
            "found label \"{label}\", expected \"{PEM_LABEL}\""
        )));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_message_and_key() {
        for spec in [KeySpec::P256, KeySpec::Rsa { bits: 2048 }] {
            let (key, _) = SigningKey::generate(spec).unwrap();
            let (other, _) = SigningKey::generate(KeySpec::P256).unwrap();
            let sig = key.sign(b"message").unwrap();
            assert!(key.verify(b"message", &sig));
            assert!(!key.verify(b"massage", &sig));
            assert!(!other.verify(b"message", &sig));
        }
    }

    #[test]
    fn generated_p256_key_round_trips_through_pem() {
        let (key, pem) = SigningKey::generate(KeySpec::P256).unwrap();
        let again = SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(again.algorithm(), Algorithm::Es256);
        assert_eq!(key.sign(b"x").unwrap().len(), 64);
    }

    #[test]
    fn generated_rsa_key_round_trips_through_pem() {
        let (key, pem) = SigningKey::generate(KeySpec::Rsa { bits: 2048 }).unwrap();
        let again = SigningKey::from_pkcs8_pem(pem.as_bytes()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(again.bits(), 2048);
        assert_eq!(key.sign(b"x").unwrap().len(), 256);
    }

    #[test]
    fn ec_kid_and_coordinates_match_an_independent_computation() {
        let (key, pem) = SigningKey::generate(KeySpec::P256).unwrap();
        let secret =
            p256::SecretKey::from_pkcs8_pem(std::str::from_utf8(pem.as_bytes()).unwrap()).unwrap();
        let spki = secret.public_key().to_public_key_der().unwrap();
        assert_eq!(
            key.kid(),
            crate::keys::jwk::kid_from_spki_der(spki.as_bytes())
        );
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let jwk = serde_json::to_value(key.public_jwk()).unwrap();
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap();
        assert_eq!(x.as_slice(), &point.x().unwrap()[..]);
    }

    #[test]
    fn the_public_half_read_without_the_signer_is_the_signers() {
        for spec in [KeySpec::P256, KeySpec::Rsa { bits: 2048 }] {
            let (key, pem) = SigningKey::generate(spec).unwrap();
            let public = SigningKey::public_of_pkcs8_pem(pem.as_bytes()).unwrap();
            assert_eq!(&public, key.public(), "{spec}");
            assert_eq!(public.public_jwk(), key.public_jwk());
        }
        let public = include_bytes!("../../tests/vectors/kubernetes-kid-rsa.pub.pem");
        let err = SigningKey::public_of_pkcs8_pem(public).unwrap_err();
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let (key, pem) = SigningKey::generate(KeySpec::P256).unwrap();
        let shown = format!("{key:?} {pem:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("PRIVATE"));
    }

    #[test]
    fn a_public_key_or_garbage_is_refused_with_a_reason() {
        let public = include_bytes!("../../tests/vectors/kubernetes-kid-rsa.pub.pem");
        let err = SigningKey::from_pkcs8_pem(public).unwrap_err();
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
        let err = SigningKey::from_pkcs8_pem(b"hello").unwrap_err();
        assert!(matches!(err, KeyError::Pem(_)), "{err}");
    }

    #[test]
    fn small_rsa_sizes_are_refused() {
        assert!(matches!(
            SigningKey::generate(KeySpec::Rsa { bits: 1024 }),
            Err(KeyError::RsaSize(1024))
        ));
    }
}
