//! Shared helpers for mxguard's integration tests: test frames, the BPF_PROG_TEST_RUN harness,
//! network namespaces with veth pairs, and running the `mxguard` binary.

pub mod differential;
pub mod frames;
pub mod harness;
pub mod netns;
pub mod pins;
pub mod process;
