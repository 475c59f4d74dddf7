//! Digests used to look secrets up without storing them.

use aws_lc_rs::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// SHA-256 of an API key. Keys are high-entropy (generated: 256 bits; imported: at
/// least 32 characters), so a fast unsalted digest is the right lookup index, as
/// GitHub does for its tokens; a slow KDF would only tax every VerifyKey.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// Constant-time equality for secrets and digests of secrets.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let d = sha256(b"abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"same", b"same"));
        assert!(!ct_eq(b"same", b"diff"));
        assert!(!ct_eq(b"short", b"longer"));
    }
}
