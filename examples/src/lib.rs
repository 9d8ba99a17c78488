//! Demo guest and embedding examples for the sandbox runner.
//!
//! [`demo_guest`] is the guest the daemon runs on its built-in defaults; the
//! `demo-guest` binary and `runner-bin demo-guest` both run it. [`probe`]
//! holds the byte pattern of the `probe-guest` binary, for tests to check.

pub mod demo_guest;
pub mod probe;
