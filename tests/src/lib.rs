//! Shared helpers for mxguard's integration tests: test frames, the BPF_PROG_TEST_RUN harness,
//! network namespaces with veth pairs, running the `mxguard` binary, and for the DNS tests an
//! authoritative test DNS server and the DNS engine wired to the real maps.

pub mod differential;
pub mod dns_rig;
pub mod dns_server;
pub mod frames;
pub mod harness;
pub mod netns;
pub mod pins;
pub mod process;
