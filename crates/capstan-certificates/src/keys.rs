//! Private keys: made for an algorithm, read from a Secret in any encoding cert-manager or openssl writes (PKCS#1,
//! SEC 1, PKCS#8), and written in the one a Certificate asks for.

use capstan_model::certificate::KeyAlgorithm;
use pkcs8::der::{Decode, Encode};
use pkcs8::{EncodePrivateKey, LineEnding, ObjectIdentifier, PrivateKeyInfo};
use rcgen::{KeyPair, SignatureAlgorithm};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::IssueError;

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// A key as PKCS#8 DER with the algorithm it signs with.
pub struct Key {
    pub pkcs8: Vec<u8>,
    pub algorithm: KeyAlgorithm,
}

fn sign_algorithm(a: KeyAlgorithm) -> &'static SignatureAlgorithm {
    match a {
        KeyAlgorithm::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        KeyAlgorithm::Ecdsa(384) => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Ecdsa(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

impl Key {
    /// A new key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Key, IssueError> {
        let pkcs8 = match algorithm {
            KeyAlgorithm::Rsa(bits) => {
                let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits as usize)
                    .map_err(|e| IssueError::Key(format!("making an RSA key: {e}")))?;
                key.to_pkcs8_der().map_err(kerr)?.as_bytes().to_vec()
            }
            KeyAlgorithm::Ecdsa(n) if n != 256 && n != 384 => {
                return Err(IssueError::Key(format!(
                    "P-{n} keys are not made on this runtime (rustls and most clients do not take them); ECDSA 256 or 384 are"
                )))
            }
            other => KeyPair::generate_for(sign_algorithm(other)).map_err(IssueError::rcgen)?.serialize_der(),
        };
        Ok(Key { pkcs8, algorithm })
    }

    /// Reads a PEM key of any usual encoding.
    pub fn from_pem(pem: &[u8]) -> Result<Key, IssueError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|_| IssueError::Key("tls.key holds no PEM private key".into()))?;
        let pkcs8 = match der {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            PrivateKeyDer::Pkcs1(k) => {
                let alg = pkcs8::AlgorithmIdentifierRef {
                    oid: RSA_ENCRYPTION,
                    parameters: Some(pkcs8::der::asn1::AnyRef::NULL),
                };
                PrivateKeyInfo::new(alg, k.secret_pkcs1_der()).to_der().map_err(kerr)?
            }
            PrivateKeyDer::Sec1(k) => {
                let mut ec = sec1::EcPrivateKey::from_der(k.secret_sec1_der())
                    .map_err(|e| IssueError::Key(format!("tls.key: {e}")))?;
                let curve = ec
                    .parameters
                    .and_then(|p| p.named_curve())
                    .ok_or_else(|| IssueError::Key("tls.key: an EC key without its curve".into()))?;
                // PKCS#8 names the curve once, in the algorithm.
                ec.parameters = None;
                let inner = ec.to_der().map_err(kerr)?;
                let params = pkcs8::der::asn1::AnyRef::from(&curve);
                let alg = pkcs8::AlgorithmIdentifierRef { oid: EC_PUBLIC_KEY, parameters: Some(params) };
                PrivateKeyInfo::new(alg, &inner).to_der().map_err(kerr)?
            }
            _ => return Err(IssueError::Key("tls.key is of an unknown kind".into())),
        };
        let algorithm = algorithm_of(&pkcs8)?;
        Ok(Key { pkcs8, algorithm })
    }

    /// The key for signing.
    pub fn key_pair(&self) -> Result<KeyPair, IssueError> {
        KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(self.pkcs8.as_slice()),
            sign_algorithm(self.algorithm),
        )
        .map_err(IssueError::rcgen)
    }

    /// PEM: PKCS#8 (`PRIVATE KEY`) when `pkcs8`, else PKCS#1 for RSA (`RSA PRIVATE KEY`) and SEC 1 for ECDSA
    /// (`EC PRIVATE KEY`), as cert-manager writes them; Ed25519 is always PKCS#8.
    pub fn to_pem(&self, pkcs8: bool) -> Result<String, IssueError> {
        let info = PrivateKeyInfo::from_der(&self.pkcs8).map_err(kerr)?;
        match self.algorithm {
            KeyAlgorithm::Rsa(_) if !pkcs8 => {
                Ok(pkcs8::der::pem::encode_string("RSA PRIVATE KEY", LineEnding::LF, info.private_key).map_err(kerr)?)
            }
            KeyAlgorithm::Ecdsa(_) if !pkcs8 => {
                let mut ec = sec1::EcPrivateKey::from_der(info.private_key).map_err(kerr)?;
                let curve = info.algorithm.parameters_oid().map_err(kerr)?;
                ec.parameters = Some(sec1::EcParameters::NamedCurve(curve));
                Ok(pkcs8::der::pem::encode_string("EC PRIVATE KEY", LineEnding::LF, &ec.to_der().map_err(kerr)?)
                    .map_err(kerr)?)
            }
            _ => Ok(pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &self.pkcs8).map_err(kerr)?),
        }
    }
}

fn kerr(e: impl std::fmt::Display) -> IssueError {
    IssueError::Key(e.to_string())
}

/// The algorithm and size of a PKCS#8 key.
fn algorithm_of(der: &[u8]) -> Result<KeyAlgorithm, IssueError> {
    let info = PrivateKeyInfo::from_der(der).map_err(kerr)?;
    match info.algorithm.oid {
        RSA_ENCRYPTION => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(info.private_key).map_err(kerr)?;
            // The modulus's exact length: a 2049-bit key is not a 2056-bit one.
            Ok(KeyAlgorithm::Rsa(key.n().bits() as u32))
        }
        EC_PUBLIC_KEY => match info.algorithm.parameters_oid() {
            Ok(P256) => Ok(KeyAlgorithm::Ecdsa(256)),
            Ok(P384) => Ok(KeyAlgorithm::Ecdsa(384)),
            _ => Err(IssueError::Key("an EC key on a curve other than P-256 and P-384".into())),
        },
        ED25519 => Ok(KeyAlgorithm::Ed25519),
        other => Err(IssueError::Key(format!("a key of algorithm {other}, which is not RSA, ECDSA or Ed25519"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_every_encoding() {
        for alg in [KeyAlgorithm::Ecdsa(256), KeyAlgorithm::Ecdsa(384), KeyAlgorithm::Ed25519, KeyAlgorithm::Rsa(2048)]
        {
            let key = Key::generate(alg).expect("a key");
            assert_eq!(algorithm_of(&key.pkcs8).expect("its algorithm"), alg);
            for pkcs8 in [false, true] {
                let pem = key.to_pem(pkcs8).expect("PEM");
                let label = match (alg, pkcs8) {
                    (KeyAlgorithm::Rsa(_), false) => "RSA PRIVATE KEY",
                    (KeyAlgorithm::Ecdsa(_), false) => "EC PRIVATE KEY",
                    _ => "PRIVATE KEY",
                };
                assert!(pem.starts_with(&format!("-----BEGIN {label}-----")), "{alg}: {pem}");
                let back = Key::from_pem(pem.as_bytes()).expect("read back");
                assert_eq!(back.algorithm, alg);
                assert_eq!(back.pkcs8, key.pkcs8, "{alg} {label}: the same key");
                back.key_pair().expect("it signs");
            }
        }
        assert!(Key::from_pem(b"not a key").is_err());
    }
}
