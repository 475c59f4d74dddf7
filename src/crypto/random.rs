//! Randomness straight from the operating system's CSPRNG.

use super::CryptoError;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub fn fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random("aws-lc's RNG failed".into()))
}

pub fn bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}

/// `len` characters drawn uniformly from the 62 alphanumerics (log2(62) = 5.95 bits
/// each). Rejection sampling: bytes >= 248 (= 4 * 62) are dropped so that `% 62`
/// carries no bias.
pub fn base62(len: usize) -> Result<String, CryptoError> {
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        fill(&mut pool)?;
        for &b in pool.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(b % 62)]));
        }
    }
    Ok(out)
}

/// Fixed-width base62 of a number, most significant digit first.
pub fn base62_u32<const WIDTH: usize>(mut n: u32) -> [u8; WIDTH] {
    let mut digits = [b'0'; WIDTH];
    for d in digits.iter_mut().rev() {
        *d = BASE62[(n % 62) as usize];
        n /= 62;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_has_length_and_alphabet() {
        let s = base62(43).unwrap();
        assert_eq!(s.len(), 43);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(s, base62(43).unwrap());
    }

    #[test]
    fn base62_u32_is_fixed_width() {
        assert_eq!(&base62_u32::<6>(0), b"000000");
        assert_eq!(&base62_u32::<2>(61), b"0z");
        assert_eq!(&base62_u32::<2>(62), b"10");
        assert_eq!(&base62_u32::<6>(u32::MAX), b"4gfFC3");
    }
}
