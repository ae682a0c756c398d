//! Sealing what the NATS broker stores about a session: AES-256-GCM (ring) under a key
//! the Ruby side derives from the app's secret, so whoever reaches NATS can neither
//! read a session's identifiers from the bucket nor write an entry that restores as
//! someone else. The memory broker's sessions never leave the process and are not
//! sealed.
//!
//! A sealed value is `1 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`; the entry's
//! key in the bucket is the additional data, so an entry moved under another key does
//! not open either. A value that does not open is refused like an unknown sid.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The first byte of a sealed value: its format.
const VERSION: u8 = 1;

/// The 32-byte key sessions are sealed with (`ANYCABLE_SECRET`, else the app's
/// `secret_key_base`, through HMAC on the Ruby side). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; 32]);

impl SealKey {
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("a sessions key is 32 bytes, got {}", bytes.len()))?;
        Ok(SealKey(key))
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

pub struct Seal {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Seal {
    pub fn new(key: &SealKey) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.0).expect("a 32-byte AES-256 key");
        Seal {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// `plain` sealed for the entry `aad` names. `None` only when the system's random
    /// source fails (then nothing is stored).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// What [`Seal::seal`] sealed for `aad`, or `None` when `sealed` was not made
    /// with this key for this entry (forged, altered, moved, or of another format).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let (&version, rest) = sealed.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(byte: u8) -> Seal {
        Seal::new(&SealKey::new(&[byte; 32]).unwrap())
    }

    #[test]
    fn opens_only_what_it_sealed_for_that_entry() {
        let s = seal(1);
        let sealed = s.seal(b"k1", br#"{"identifiers":"alice"}"#).unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"alice"), "readable");
        assert_eq!(
            s.open(b"k1", &sealed).as_deref(),
            Some(&br#"{"identifiers":"alice"}"#[..])
        );
        // Moved under another key, sealed with another secret, altered, plain JSON.
        assert_eq!(s.open(b"k2", &sealed), None);
        assert_eq!(seal(2).open(b"k1", &sealed), None);
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(b"k1", &altered), None);
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(s.open(b"k1", &flipped), None);
        assert_eq!(s.open(b"k1", br#"{"identifiers":"alice"}"#), None);
        assert_eq!(s.open(b"k1", &[]), None);
        assert_eq!(s.open(b"k1", &[VERSION, 0, 0]), None);
        // A fresh nonce each time.
        assert_ne!(s.seal(b"k1", b"x"), s.seal(b"k1", b"x"));
    }

    #[test]
    fn keys_are_32_bytes_and_never_shown() {
        assert!(SealKey::new(&[0; 16]).is_err());
        assert_eq!(
            format!("{:?}", SealKey::new(&[7; 32]).unwrap()),
            "SealKey(..)"
        );
    }
}
