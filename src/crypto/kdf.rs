//! Key derivation: HKDF-SHA256 (RFC 5869), for a key that must be derived from
//! another secret rather than drawn at random.

use aws_lc_rs::{
    error::Unspecified,
    hkdf::{HKDF_SHA256, Salt},
};
use zeroize::Zeroizing;

/// 32 bytes of HKDF-SHA256 output keyed by `ikm`, without salt (the input is already a
/// secret key, RFC 5869 section 3.1; an empty salt is the same as HashLen zero bytes),
/// bound to its purpose by `info`: the same input with another `info` gives an
/// unrelated key. (Expand refuses only outputs longer than 255 hash lengths, so the
/// error never happens for 32 bytes.)
pub fn hkdf_sha256_32(ikm: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>, Unspecified> {
    let mut okm = Zeroizing::new([0u8; 32]);
    let info = [info];
    Salt::new(HKDF_SHA256, &[])
        .extract(ikm)
        .expand(&info, HKDF_SHA256)?
        .fill(okm.as_mut_slice())?;
    Ok(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_5869_test_case_3() {
        // RFC 5869 A.3: SHA-256, no salt, no info; the first 32 bytes of the OKM.
        let ikm = [0x0b; 22];
        let okm = hkdf_sha256_32(&ikm, b"").unwrap();
        let expected = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d";
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn info_separates_purposes() {
        let derive = |info: &[u8]| *hkdf_sha256_32(b"k", info).unwrap();
        assert_ne!(derive(b"a"), derive(b"b"));
        assert_eq!(derive(b"a"), derive(b"a"));
    }
}
