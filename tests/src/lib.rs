//! Shared helpers for mxguard's integration tests.

pub mod dns_rig;
pub mod dns_server;
