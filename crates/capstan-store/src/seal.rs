//! Encryption at rest: every stored value sealed with AES-256-GCM under a data key, data keys kept in the store
//! wrapped by a key-encryption key that lives outside it (a key file, or a command's output).

use std::collections::HashMap;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use sha2::{Digest, Sha256};

/// What a sealed value starts with; JSON never starts with a NUL byte.
pub(crate) const MAGIC: &[u8; 4] = b"\0cs1";
/// Bytes of a key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of a key-encryption key's id in a wrapped data key.
const KEK_ID_LEN: usize = 16;

/// Why a key or a sealed value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    Key(String),
    #[error("a stored value does not decrypt (a damaged file, or a value moved between keys)")]
    Open,
    #[error("no randomness: {0}")]
    Random(String),
}

/// A key-encryption key and its id (the start of its SHA-256, so that a wrong key is named without showing it).
#[derive(Clone)]
pub struct Kek {
    id: String,
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

impl Kek {
    pub fn new(key: [u8; KEY_LEN]) -> Kek {
        let id = hex::encode(&Sha256::digest(key)[..KEK_ID_LEN / 2]);
        Kek { id, key }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead(&self) -> Result<LessSafeKey, SealError> {
        aead_key(&self.key)
    }
}

/// The key-encryption keys at hand: the first seals, every one opens (as Kubernetes' EncryptionConfiguration
/// lists its keys, the one to write with first).
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: Vec<Kek>,
}

impl Keyring {
    pub fn new(keys: Vec<Kek>) -> Result<Keyring, SealError> {
        if keys.is_empty() {
            return Err(SealError::Key("no key".into()));
        }
        Ok(Keyring { keys })
    }

    /// Keys as a key file or a key command gives them: one per line, base64 of 32 bytes; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Keyring, SealError> {
        use base64::Engine;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| SealError::Key(format!("line {}: not base64: {e}", n + 1)))?;
            let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
                SealError::Key(format!("line {}: a key is {KEY_LEN} bytes, this one {}", n + 1, b.len()))
            })?;
            keys.push(Kek::new(key));
        }
        Keyring::new(keys).map_err(|_| SealError::Key("no key in it".into()))
    }

    /// The keys as a key file holds them.
    pub fn to_text(&self) -> String {
        use base64::Engine;
        let mut out = String::from("# Capstan's key-encryption keys: the first encrypts, every one decrypts.\n");
        for k in &self.keys {
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(k.key));
            out.push('\n');
        }
        out
    }

    /// A keyring of one new random key.
    pub fn generate() -> Result<Keyring, SealError> {
        Keyring::new(vec![Kek::new(random()?)])
    }

    /// The same keys with `first` in front (the key to seal with from now on).
    pub fn with_first(&self, first: Kek) -> Keyring {
        let first_id = first.id.clone();
        let mut keys = vec![first];
        keys.extend(self.keys.iter().filter(|k| k.id != first_id).cloned());
        Keyring { keys }
    }

    pub fn active(&self) -> &Kek {
        &self.keys[0]
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    fn find(&self, id: &str) -> Option<&Kek> {
        self.keys.iter().find(|k| k.id == id)
    }
}

/// `N` random bytes from the system.
pub fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(b)
}

fn aead_key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key).map(LessSafeKey::new).map_err(|_| SealError::Key("not an AES-256 key".into()))
}

/// `nonce | ciphertext | tag` of `plain` under `key`, bound to `aad`.
fn encrypt(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce_bytes: [u8; NONCE_LEN] = random()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce_bytes);
    let mut body = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(aad), &mut body)
        .map_err(|_| SealError::Open)?;
    out.extend_from_slice(&body);
    Ok(out)
}

fn decrypt(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
    let mut body = body.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut body).map_err(|_| SealError::Open)?;
    Ok(plain.to_vec())
}

/// A data key wrapped by a key-encryption key: `kek id | nonce | ciphertext | tag`.
pub(crate) fn wrap(kek: &Kek, dek: &[u8; KEY_LEN]) -> Result<Vec<u8>, SealError> {
    let mut out = kek.id.as_bytes().to_vec();
    out.extend(encrypt(&kek.aead()?, b"capstan data key", dek)?);
    Ok(out)
}

/// The id of the key-encryption key that wrapped a data key.
pub(crate) fn wrapped_by(wrapped: &[u8]) -> String {
    String::from_utf8_lossy(&wrapped[..KEK_ID_LEN.min(wrapped.len())]).into_owned()
}

/// A wrapped data key opened with the keyring; `None` when no key of the ring wrapped it.
pub(crate) fn unwrap(ring: &Keyring, wrapped: &[u8]) -> Result<Option<[u8; KEY_LEN]>, SealError> {
    let Some(kek) = ring.find(&wrapped_by(wrapped)) else { return Ok(None) };
    let plain = decrypt(&kek.aead()?, b"capstan data key", &wrapped[KEK_ID_LEN.min(wrapped.len())..])?;
    plain.try_into().map(Some).map_err(|_| SealError::Open)
}

/// The data keys in use: values are sealed with the active one, opened with the one they name.
pub(crate) struct Sealer {
    keys: HashMap<u32, LessSafeKey>,
    active: u32,
}

impl Sealer {
    pub(crate) fn new(deks: &[(u32, [u8; KEY_LEN])], active: u32) -> Result<Sealer, SealError> {
        let mut keys = HashMap::new();
        for (id, k) in deks {
            keys.insert(*id, aead_key(k)?);
        }
        Ok(Sealer { keys, active })
    }

    /// The id of the data key values are sealed with.
    pub(crate) fn active(&self) -> u32 {
        self.active
    }

    /// `MAGIC | data key id | nonce | ciphertext | tag`, bound to `aad` (the table and key it is stored under).
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.keys.get(&self.active).ok_or(SealError::Open)?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend(encrypt(key, aad, plain)?);
        Ok(out)
    }

    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(MAGIC.as_slice()).ok_or(SealError::Open)?;
        if rest.len() < 4 {
            return Err(SealError::Open);
        }
        let (id, body) = rest.split_at(4);
        let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
        decrypt(self.keys.get(&id).ok_or(SealError::Open)?, aad, body)
    }
}

/// Whether stored bytes are sealed.
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_seal_and_open_only_under_their_key_and_place() {
        let dek: [u8; KEY_LEN] = random().unwrap();
        let s = Sealer::new(&[(1, dek)], 1).unwrap();
        let sealed = s.seal(b"objects\0Secret/default/x", b"{\"v\":\"hunter2\"}").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.open(b"objects\0Secret/default/x", &sealed).unwrap(), b"{\"v\":\"hunter2\"}");
        assert!(s.open(b"objects\0Secret/default/y", &sealed).is_err(), "moved to another key");
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(s.open(b"objects\0Secret/default/x", &damaged).is_err());
    }

    #[test]
    fn a_data_key_unwraps_only_with_the_key_that_wrapped_it() {
        let ring = Keyring::generate().unwrap();
        let other = Keyring::generate().unwrap();
        let dek: [u8; KEY_LEN] = random().unwrap();
        let wrapped = wrap(ring.active(), &dek).unwrap();
        assert_eq!(unwrap(&ring, &wrapped).unwrap(), Some(dek));
        assert_eq!(unwrap(&other, &wrapped).unwrap(), None);
        let both = other.with_first(ring.active().clone());
        assert_eq!(both.ids().len(), 2);
        assert_eq!(unwrap(&both, &wrapped).unwrap(), Some(dek));
    }

    #[test]
    fn key_files_parse_with_comments_and_bad_ones_are_named() {
        let ring = Keyring::generate().unwrap();
        let text = ring.to_text();
        assert_eq!(Keyring::parse(&text).unwrap().ids(), ring.ids());
        assert!(Keyring::parse("# nothing\n").unwrap_err().to_string().contains("no key"));
        assert!(Keyring::parse("not base64!\n").unwrap_err().to_string().contains("line 1"));
        assert!(Keyring::parse("AAAA\n").unwrap_err().to_string().contains("32 bytes"));
    }
}
