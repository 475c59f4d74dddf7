//! The `kms` binary itself: dev mode, refusal without secrets, migrate, user create,
//! and no secret in any line it prints.
