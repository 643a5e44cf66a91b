//! The `reject` action: turn a denied SYN into a TCP RST+ACK in place and bounce it back out
//! with XDP_TX, as the kernel's `tcp_v4_send_reset` / `tcp_v6_send_reset` would answer.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::PerCpuArray, programs::XdpContext};
use filter_common::{Family, RateWindow};

use crate::{Frame, be16};

const NS_PER_SEC: u64 = 1_000_000_000;
const TCP_FIN: u8 = 0x01;
const TCP_RST_ACK: u8 = 0x14;

/// Takes one token from this CPU's one-second window in `slot`; false when it is spent.
/// The coarse clock (jiffies) is plenty for a one-second window and cheaper per call.
#[inline(always)]
pub fn within_rate(windows: &PerCpuArray<RateWindow>, slot: u32, per_sec: u32) -> bool {
    let Some(window) = windows.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot of a per-CPU array; XDP runs with preemption off.
    let window = unsafe { &mut *window };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(window.window_start_ns) >= NS_PER_SEC {
        window.window_start_ns = now;
        window.sent = 0;
    }
    if window.sent >= u64::from(per_sec) {
        return false;
    }
    window.sent += 1;
    true
}

/// One's-complement sum of big-endian 16-bit words (`bytes` has an even length).
#[inline(always)]
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The RST's TCP header (no options), checksum left zero.
#[inline(always)]
fn rst_header(syn: &[u8; 20], segment_len: usize) -> [u8; 20] {
    let header_len = usize::from(syn[12] >> 4) * 4;
    let data_len = segment_len.saturating_sub(header_len) as u32;
    let seq = u32::from_be_bytes([syn[4], syn[5], syn[6], syn[7]]);
    // Acknowledge everything the SYN occupied: SYN itself, FIN if set, and any data.
    let ack = seq
        .wrapping_add(1)
        .wrapping_add(u32::from(syn[13] & TCP_FIN))
        .wrapping_add(data_len);
    let ack = ack.to_be_bytes();
    [
        syn[2],
        syn[3],
        syn[0],
        syn[1], // ports swapped
        0,
        0,
        0,
        0, // seq 0: the SYN carried no ACK
        ack[0],
        ack[1],
        ack[2],
        ack[3],
        5 << 4,
        TCP_RST_ACK,
        0,
        0, // window
        0,
        0, // checksum
        0,
        0, // urgent pointer
    ]
}

/// Rewrites the frame into a RST answering the SYN whose IP header starts at `l3` and TCP
/// header at `l4`, and trims it. False leaves the caller to drop the frame.
#[inline(always)]
pub fn answer_with_rst(
    ctx: &XdpContext,
    frame: &Frame,
    family: Family,
    l3: usize,
    l4: usize,
) -> bool {
    // Read everything first: the headers are overwritten in place.
    let (Some(eth), Some(syn)) = (frame.bytes::<12>(0), frame.bytes::<20>(l4)) else {
        return false;
    };
    let mut eth_swapped = [0u8; 12];
    eth_swapped[..6].copy_from_slice(&eth[6..12]);
    eth_swapped[6..].copy_from_slice(&eth[..6]);

    let new_len = match family {
        Family::Ipv4 => {
            let Some(ip) = frame.bytes::<20>(l3) else {
                return false;
            };
            let segment_len = usize::from(be16(ip[2], ip[3])).saturating_sub(l4 - l3);
            let mut tcp = rst_header(&syn, segment_len);
            let mut header = [
                0x45, 0, 0, 40, // version, IHL 5, total length 40
                0, 0, 0x40, 0, // id 0, DF
                64, 6, 0, 0, // TTL, TCP, checksum
                ip[16], ip[17], ip[18], ip[19], // source: the SYN's destination
                ip[12], ip[13], ip[14], ip[15], // destination: the SYN's source
            ];
            let ip_sum = fold(sum_words(0, &header)).to_be_bytes();
            header[10] = ip_sum[0];
            header[11] = ip_sum[1];
            // Pseudo-header: addresses, protocol, TCP length.
            let pseudo = sum_words(6 + 20, &header[12..20]);
            let tcp_sum = fold(sum_words(pseudo, &tcp)).to_be_bytes();
            tcp[16] = tcp_sum[0];
            tcp[17] = tcp_sum[1];
            if !(frame.write(l3, &header) && frame.write(l3 + 20, &tcp)) {
                return false;
            }
            l3 + 40
        }
        Family::Ipv6 => {
            let Some(ip) = frame.bytes::<40>(l3) else {
                return false;
            };
            let segment_len = (usize::from(be16(ip[4], ip[5])) + 40).saturating_sub(l4 - l3);
            let mut tcp = rst_header(&syn, segment_len);
            let mut header = [0u8; 40];
            header[0] = 0x60;
            header[5] = 20; // payload length
            header[6] = 6; // next header TCP
            header[7] = 64; // hop limit
            header[8..24].copy_from_slice(&ip[24..40]);
            header[24..40].copy_from_slice(&ip[8..24]);
            let pseudo = sum_words(6 + 20, &header[8..40]);
            let tcp_sum = fold(sum_words(pseudo, &tcp)).to_be_bytes();
            tcp[16] = tcp_sum[0];
            tcp[17] = tcp_sum[1];
            if !(frame.write(l3, &header) && frame.write(l3 + 40, &tcp)) {
                return false;
            }
            l3 + 60
        }
        Family::Other => return false,
    };
    if !frame.write(0, &eth_swapped) {
        return false;
    }
    let delta = new_len as i64 - (frame.end - frame.start) as i64;
    // SAFETY: shrinking the frame we were handed; no packet pointer is used afterwards.
    delta == 0 || unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } == 0
}
