//! Cryptographic primitives: small, pure where possible, each with its tests beside it.
//! Nothing here knows about requests, users or databases.

pub mod digest;
pub mod kdf;
pub mod master;
pub mod password;
pub mod pkcs11;
pub mod random;
pub mod sealing;
pub mod signing;

/// A failure inside a primitive. Never carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("sealed data could not be opened (wrong master key or tampered data)")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("token signing failed: {0}")]
    Token(String),
    #[error("the password hashing pool is gone")]
    PoolClosed,
    #[error("too many password hashes waiting")]
    Busy,
    /// The PKCS#11 token holding the master key failed (not a wrong key or tampered
    /// data: that is `Open`). The detail names the call and the token's return value.
    #[error("the PKCS#11 token failed: {0}")]
    Hsm(String),
}
