//! mxguard userspace: load the XDP program, fill its maps, attach it, run the daemon.

pub mod cidr;
pub mod cli;
pub mod daemon;
pub mod fast_path;
pub mod filter;

/// The XDP program, built by `build.rs` (aya-build) and embedded so `mxguard` is one file.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter-ebpf"));
