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

filter_common::bpf_object!();
