//! mxguard userspace: load the XDP program, fill its maps, attach it, run the daemon.

pub mod allowlist;
pub mod block_masks;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod fast_path;
pub mod filter;
pub mod links;
pub mod manuals;
pub mod maps;
pub mod metrics;
pub mod milter;
pub mod netwatch;
pub mod notify;
pub mod program;
pub mod samples;
pub mod status;
pub mod temporary;

/// The XDP program, built by `build.rs` (aya-build) and embedded so `mxguard` is one file.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/filter-ebpf"));
