//! Two reference XDP programs for `cargo xtask bench`, kept out of mxguard's production object:
//! `bench_pass` returns XDP_PASS without reading the frame (the floor of any XDP program's
//! cost) and `bench_drop` returns XDP_DROP for every frame (the ceiling of what dropping in XDP
//! can reach). Neither counts anything: the benchmark reads the interface's counters.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

// The licence the kernel reads from the object: GPL-compatible, like mxguard's program.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// Neither program can panic; a no_std binary must still name a handler.
#[cfg(not(test))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
