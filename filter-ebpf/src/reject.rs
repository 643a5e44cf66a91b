//! The `reject` action: turn a denied SYN into a TCP RST+ACK in place and bounce it back out
//! with XDP_TX, as the kernel's `tcp_v4_send_reset` / `tcp_v6_send_reset` would answer.

use core::mem::{size_of, swap};

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use filter_common::Family;

use crate::{
    checksum::Checksum,
    parse::{EthHdr, Frame, IPPROTO_TCP, Ipv4Hdr, Ipv6Hdr, TcpHdr, TcpHead, TcpPorts},
};

const TTL: u8 = 64;
const IPV4_LEN: usize = size_of::<Ipv4Hdr>();
const IPV6_LEN: usize = size_of::<Ipv6Hdr>();
const TCP_LEN: usize = size_of::<TcpHdr>();

/// Rewrites the frame into a RST answering the SYN whose IP header is `ip` bytes into the frame
/// and TCP header `tcp` bytes, and trims it. False leaves the caller to drop the frame.
#[inline(always)]
pub fn answer_with_rst(
    ctx: &XdpContext,
    frame: &mut Frame,
    family: Family,
    ip: usize,
    tcp: usize,
) -> bool {
    // The SYN's IP header is rewritten in place and its TCP header may move (IPv4 options,
    // IPv6 extension headers), so the RST's TCP header is built aside first.
    let (rst, ip_len) = match family {
        Family::Ipv4 => match frame.header::<Ipv4Hdr>(ip) {
            Some(header) => (
                rst_for(frame, tcp, header.total_len().saturating_sub(tcp - ip)),
                IPV4_LEN,
            ),
            None => return false,
        },
        Family::Ipv6 => match frame.header::<Ipv6Hdr>(ip) {
            Some(header) => (
                rst_for(
                    frame,
                    tcp,
                    (header.payload_len() + IPV6_LEN).saturating_sub(tcp - ip),
                ),
                IPV6_LEN,
            ),
            None => return false,
        },
        Family::Other => return false,
    };
    let Some(mut rst) = rst else {
        return false;
    };
    let pseudo_header = match family {
        Family::Ipv4 => {
            let Some(header) = frame.header_mut::<Ipv4Hdr>(ip) else {
                return false;
            };
            answer_ipv4(header)
        }
        _ => {
            let Some(header) = frame.header_mut::<Ipv6Hdr>(ip) else {
                return false;
            };
            answer_ipv6(header)
        }
    };
    rst.check = pseudo_header.add_tcp(&rst).finish();
    let Some(out) = frame.header_mut::<TcpHdr>(ip + ip_len) else {
        return false;
    };
    *out = rst;
    let Some(eth) = frame.header_mut::<EthHdr>(0) else {
        return false;
    };
    swap(&mut eth.dst, &mut eth.src);
    let delta = (ip + ip_len + TCP_LEN) as i64 - frame.len() as i64;
    // SAFETY: shrinking the frame we were handed; no packet pointer is used afterwards.
    delta == 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } == 0
}

/// The RST's TCP header (no options), checksum left zero, answering the SYN at `tcp` whose
/// segment is `segment_len` bytes long. None: no whole TCP header to answer.
#[inline(always)]
fn rst_for(frame: &Frame, tcp: usize, segment_len: usize) -> Option<TcpHdr> {
    let syn = &frame.header::<TcpHdr>(tcp)?.head;
    let data_len = segment_len.saturating_sub(syn.header_len()) as u32;
    // Acknowledge everything the SYN occupied: SYN itself, FIN if set, and any data.
    let ack = u32::from_be_bytes(syn.seq)
        .wrapping_add(1)
        .wrapping_add(u32::from(syn.flags & TcpHead::FIN))
        .wrapping_add(data_len);
    Some(TcpHdr {
        head: TcpHead {
            ports: TcpPorts {
                source: syn.ports.dest,
                dest: syn.ports.source,
            },
            // Sequence 0: the SYN carried no ACK to take it from.
            seq: [0; 4],
            ack_seq: ack.to_be_bytes(),
            data_offset: ((TCP_LEN / 4) as u8) << 4,
            flags: TcpHead::RST | TcpHead::ACK,
        },
        window: [0; 2],
        check: [0; 2],
        urgent: [0; 2],
    })
}

/// Turns the SYN's IPv4 header into the RST's (no options, DF); returns the TCP pseudo-header
/// sum.
#[inline(always)]
fn answer_ipv4(ip: &mut Ipv4Hdr) -> Checksum {
    ip.version_ihl = Ipv4Hdr::VERSION_IHL_NO_OPTIONS;
    ip.tos = 0;
    ip.total_len = ((IPV4_LEN + TCP_LEN) as u16).to_be_bytes();
    ip.id = [0; 2];
    ip.flags_fragment_offset = Ipv4Hdr::DONT_FRAGMENT;
    ip.ttl = TTL;
    ip.protocol = IPPROTO_TCP;
    ip.check = [0; 2];
    swap(&mut ip.saddr, &mut ip.daddr);
    ip.check = Checksum::default()
        .add(&[ip.version_ihl, ip.tos])
        .add(&ip.total_len)
        .add(&ip.id)
        .add(&ip.flags_fragment_offset)
        .add(&[ip.ttl, ip.protocol])
        .add(&ip.saddr)
        .add(&ip.daddr)
        .finish();
    pseudo_header(&ip.saddr, &ip.daddr)
}

/// Turns the SYN's IPv6 header into the RST's (no extension headers); returns the TCP
/// pseudo-header sum.
#[inline(always)]
fn answer_ipv6(ip: &mut Ipv6Hdr) -> Checksum {
    ip.version_class_flow = Ipv6Hdr::VERSION_CLASS_FLOW;
    ip.payload_len = (TCP_LEN as u16).to_be_bytes();
    ip.next_header = IPPROTO_TCP;
    ip.hop_limit = TTL;
    swap(&mut ip.saddr, &mut ip.daddr);
    pseudo_header(&ip.saddr, &ip.daddr)
}

/// The TCP pseudo-header: addresses, protocol, TCP length.
#[inline(always)]
fn pseudo_header(saddr: &[u8], daddr: &[u8]) -> Checksum {
    Checksum::starting_at(u32::from(IPPROTO_TCP) + TCP_LEN as u32)
        .add(saddr)
        .add(daddr)
}

impl Checksum {
    #[inline(always)]
    fn add_tcp(self, tcp: &TcpHdr) -> Self {
        let head = &tcp.head;
        self.add(&head.ports.source)
            .add(&head.ports.dest)
            .add(&head.seq)
            .add(&head.ack_seq)
            .add(&[head.data_offset, head.flags])
            .add(&tcp.window)
            .add(&tcp.check)
            .add(&tcp.urgent)
    }
}
