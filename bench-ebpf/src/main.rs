//! Two reference XDP programs for `cargo xtask bench`, kept out of mxguard's production object:
//! `bench_pass` returns XDP_PASS without reading the frame (the floor of any XDP program's
//! cost) and `bench_drop` returns XDP_DROP for every frame (the ceiling of what dropping in XDP
//! can reach). Neither counts anything: the benchmark reads the interface's counters.
//! `bench_floor` is the mail benchmark's floor: the least an XDP program can do to drop a
//! flood while mail still arrives (see `bench/src/mail.rs`).
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

/// The mail benchmark's relay, 198.51.100.10 (`bench::mail::RELAY`), as the frame holds it.
const FLOOR_RELAY: [u8; 4] = [198, 51, 100, 10];
const ETH_HEADER: usize = 14;
const IPV4_SOURCE: usize = ETH_HEADER + 12;

/// Drops every IPv4 frame whose source is not the relay; passes the rest. ARP and IPv6 (so
/// neighbour discovery) pass: a program that drops ARP starves a kernel-stack generator of its
/// neighbour entry, and the flood silently stops.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + IPV4_SOURCE + 4 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: both reads lie inside [data, data_end), checked just above.
    let (ethertype, source) = unsafe {
        (
            *((start + 12) as *const [u8; 2]),
            *((start + IPV4_SOURCE) as *const [u8; 4]),
        )
    };
    if ethertype != [0x08, 0x00] || source == FLOOR_RELAY {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

filter_common::bpf_object!();
