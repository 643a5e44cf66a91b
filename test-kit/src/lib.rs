//! Test infrastructure for mxguard, shared by the integration tests, the benchmark, the fuzz
//! target and xtask:
//! - [`root`]: the one root check;
//! - [`netns`]: network namespaces with veth pairs, cleaned up on drop, signal and restart;
//! - [`lab`]: the mail-gateway topology of the namespace suites;
//! - [`frames`]: test frames with the shapes the verdict rule cares about;
//! - [`process`]: the real `mxguard` binary as a child process;
//! - [`postfix`]: a private, real Postfix instance and a `swaks` runner;
//! - with `loader`: [`program`] (load a configured filter, BPF_PROG_TEST_RUN), [`pins`]
//!   (private bpffs pin directories), [`differential`] (program against the reference) and
//!   [`notify`] (a NOTIFY_SOCKET for the daemon's systemd messages);
//! - with `dns`: [`dns_server`] (an authoritative test DNS server), and with both,
//!   [`dns_rig`] (the DNS engine wired to the loaded program).
//!
//! Without `loader` nothing here needs filter-user, whose build script needs bpf-linker: xtask,
//! which installs bpf-linker, uses this crate that way.

pub mod frames;
pub mod lab;
pub mod netns;
pub mod postfix;
pub mod process;
pub mod root;

#[cfg(feature = "loader")]
pub mod differential;
#[cfg(all(feature = "loader", feature = "dns"))]
pub mod dns_rig;
#[cfg(feature = "dns")]
pub mod dns_server;
#[cfg(feature = "loader")]
pub mod notify;
#[cfg(feature = "loader")]
pub mod pins;
#[cfg(feature = "loader")]
pub mod program;
