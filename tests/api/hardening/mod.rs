//! Hardening against hostile clients (issue 18).

mod ops;
