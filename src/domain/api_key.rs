//! The API key format: `kms_` + 43 base62 characters (256 bits from the OS CSPRNG) +
//! a 6-character base62 CRC32 of everything before it, like GitHub's tokens. The
//! checksum lets VerifyKey reject a mistyped key without a database lookup, and the
//! fixed prefix lets secret scanners spot a leaked key.

use crate::crypto::{CryptoError, random};

pub const PREFIX: &str = "kms_";
const BODY_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
pub const GENERATED_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
/// Characters of a key shown in lists and logs: enough to tell keys apart, far too
/// few to use (for a generated key, 8 of its 43 random characters).
pub const DISPLAY_PREFIX_LEN: usize = 12;

/// Base62 digits: ASCII.
fn checksum(head: &str) -> [u8; CHECKSUM_LEN] {
    random::base62_u32(crc32fast::hash(head.as_bytes()))
}

pub fn generate() -> Result<String, CryptoError> {
    let mut key = String::with_capacity(GENERATED_LEN);
    key.push_str(PREFIX);
    key.push_str(&random::base62(BODY_LEN)?);
    let sum = checksum(&key);
    key.extend(sum.iter().copied().map(char::from));
    Ok(key)
}

/// Whether a key claims the KMS format (and so must carry a valid checksum).
pub fn claims_kms_format(key: &str) -> bool {
    key.starts_with(PREFIX)
}

/// Whether a key in the KMS format has the right shape and checksum. Keys without
/// the `kms_` prefix (imported ones) are not judged here.
pub fn checksum_ok(key: &str) -> bool {
    if key.len() != GENERATED_LEN || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return false;
    }
    let (head, sum) = key.split_at(GENERATED_LEN - CHECKSUM_LEN);
    crate::crypto::digest::ct_eq(&checksum(head), sum.as_bytes())
}

/// The non-secret start of a key shown beside it in lists: 12 characters of a KMS key
/// (`kms_` + 8 of its 43 random ones); of an imported key, whose secret part may be as
/// short as 32 characters, at most a quarter of it and never more than 8.
pub fn display_prefix(key: &str) -> String {
    let shown = if claims_kms_format(key) {
        DISPLAY_PREFIX_LEN
    } else {
        (key.chars().count() / 4).min(8)
    };
    key.chars().take(shown).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_format() {
        let k = generate().unwrap();
        assert_eq!(k.len(), GENERATED_LEN);
        assert!(k.starts_with("kms_"));
        assert!(k[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(checksum_ok(&k));
        assert_ne!(k, generate().unwrap());
        assert_eq!(display_prefix(&k), k[..12]);
    }

    #[test]
    fn a_typo_breaks_the_checksum() {
        let k = generate().unwrap();
        let mut typo = k.clone().into_bytes();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(!checksum_ok(&String::from_utf8(typo).unwrap()));
        assert!(!checksum_ok(&k[..k.len() - 1]));
        assert!(!checksum_ok(""));
        assert!(!checksum_ok("kms_"));
    }

    #[test]
    fn imported_keys_show_little() {
        assert_eq!(display_prefix(&"a".repeat(32)), "a".repeat(8));
        assert_eq!(display_prefix(&"b".repeat(256)), "b".repeat(8));
        assert_eq!(display_prefix("short"), "s");
    }

    #[test]
    fn format_claim_is_the_prefix() {
        assert!(claims_kms_format("kms_x"));
        assert!(!claims_kms_format("legacy-key-0123456789abcdef0123456789"));
    }
}
