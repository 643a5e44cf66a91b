//! Builds the reference XDP programs (`bench-ebpf`: pass-all, drop-all) with nightly through
//! aya-build, so the benchmark embeds them. Needs bpf-linker: `cargo xtask setup` builds one.

include!("../build-support/build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf_package("bench-ebpf")
}
