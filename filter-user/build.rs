//! Builds the XDP program (`filter-ebpf`) with nightly through aya-build, so that the `mxguard`
//! binary embeds it. Needs bpf-linker: `cargo xtask setup` builds one into `.tools/bin`.

include!("../build-support/build_ebpf.rs");

fn main() -> anyhow::Result<()> {
    build_ebpf_package("filter-ebpf")
}
