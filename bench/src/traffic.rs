//! Benchmark traffic and allowlists, generated from a fixed seed so every run sees the same
//! bytes. Destinations are always the documentation addresses of the protected mail server
//! (192.0.2.1, 2001:db8::1); flood sources are random (spoofed) addresses. The frames only ever
//! exist in BPF_PROG_TEST_RUN and on a veth pair between two namespaces the benchmark creates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{IpNumber, Ipv4Header, Ipv6Header, TcpHeader};
use filter_user::cidr::Cidr;

pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The protected port.
pub const SMTP: u16 = 25;

/// Placeholder MACs; the replayer rewrites them to the veth pair's real ones.
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The filtering service's relays: the first prefixes of every generated allowlist, so the
/// relay SYNs of the mixed traffic are allowlisted whatever the list's size.
pub const RELAYS: &[&str] = &[
    "198.51.100.0/28",
    "198.51.100.64/27",
    "198.51.100.200/32",
    "203.0.113.5/32",
    "203.0.113.9/32",
    "203.0.113.128/26",
    "2001:db8:1::/48",
    "2001:db8:2::25/128",
    "2001:db8:3:10::/64",
    "2001:db8:4::/56",
];

/// A small deterministic generator (SplitMix64): reproducible traffic without a dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A random unicast IPv4 address outside 0/8, 10/8, 127/8 and 224/3: the kernel discards
    /// martian sources early, which would flatter the netfilter cases.
    pub fn unicast_v4(&mut self) -> Ipv4Addr {
        loop {
            let addr = Ipv4Addr::from_bits(self.next_u64() as u32);
            let first = addr.octets()[0];
            if first != 0 && first != 10 && first != 127 && first < 224 {
                return addr;
            }
        }
    }

    /// A random global unicast IPv6 address (2000::/3).
    pub fn unicast_v6(&mut self) -> Ipv6Addr {
        let bits = (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64());
        Ipv6Addr::from_bits((bits >> 3) | (1u128 << 125))
    }
}

/// A TCP segment to put in a frame.
#[derive(Clone, Debug)]
pub struct Segment {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub ack_flag: bool,
    pub psh: bool,
    /// A Linux-like SYN option block (MSS, SACK permitted, timestamps, window scale).
    pub syn_options: bool,
    pub payload: Vec<u8>,
}

impl Segment {
    pub fn syn(source: IpAddr, port: u16, rng: &mut Rng) -> Segment {
        let destination = match source {
            IpAddr::V4(_) => IpAddr::V4(SERVER_V4),
            IpAddr::V6(_) => IpAddr::V6(SERVER_V6),
        };
        Segment {
            source,
            destination,
            source_port: 1024 + rng.below(64_000) as u16,
            destination_port: port,
            seq: rng.next_u64() as u32,
            ack: 0,
            syn: true,
            ack_flag: false,
            psh: false,
            syn_options: true,
            payload: Vec::new(),
        }
    }
}

/// IPv6 extension headers placed between the IPv6 header and TCP in worst-case frames.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    DestOpts,
    Routing,
}

/// Builds an Ethernet frame (optionally with VLAN tags, outermost first, and IPv6 extension
/// headers) around `segment`, with correct IPv4 and TCP checksums so a kernel that gets the
/// frame past XDP treats it like the real thing.
pub fn frame(vlans: &[u16], ext: &[Ext], segment: &Segment) -> Vec<u8> {
    let mut tcp = TcpHeader::new(
        segment.source_port,
        segment.destination_port,
        segment.seq,
        64_240,
    );
    tcp.syn = segment.syn;
    tcp.ack = segment.ack_flag;
    tcp.psh = segment.psh;
    tcp.acknowledgment_number = segment.ack;
    if segment.syn_options {
        // MSS 1460, SACK permitted, timestamps, NOP, window scale 7: what Linux sends.
        let options = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        tcp.set_options_raw(&options).expect("20 bytes of options");
    }
    let (ether_type, network) = match (segment.source, segment.destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            let mut ip = Ipv4Header::new(
                (tcp.header_len() + segment.payload.len()) as u16,
                64,
                IpNumber::TCP,
                source.octets(),
                destination.octets(),
            )
            .expect("IPv4 header");
            ip.header_checksum = ip.calc_header_checksum();
            tcp.checksum = tcp
                .calc_checksum_ipv4(&ip, &segment.payload)
                .expect("checksum");
            let mut bytes = ip.to_bytes().to_vec();
            bytes.extend_from_slice(&tcp.to_bytes());
            bytes.extend_from_slice(&segment.payload);
            (0x0800u16, bytes)
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            let mut chain = Vec::new();
            for (index, header) in ext.iter().enumerate() {
                let next = ext.get(index + 1).map(ext_number).unwrap_or(6);
                let mut bytes = vec![0u8; 8];
                bytes[0] = next;
                match header {
                    // Segment routing, segments left 0: ignored by the kernel.
                    Ext::Routing => bytes[2] = 4,
                    // One PadN option filling the header.
                    Ext::HopByHop | Ext::DestOpts => {
                        bytes[2] = 1;
                        bytes[3] = 4;
                    }
                }
                chain.extend(bytes);
            }
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Default::default(),
                payload_length: (chain.len() + tcp.header_len() + segment.payload.len()) as u16,
                next_header: IpNumber(ext.first().map(ext_number).unwrap_or(6)),
                hop_limit: 64,
                source: source.octets(),
                destination: destination.octets(),
            };
            tcp.checksum = tcp
                .calc_checksum_ipv6(&ip, &segment.payload)
                .expect("checksum");
            let mut bytes = ip.to_bytes().to_vec();
            bytes.extend(chain);
            bytes.extend_from_slice(&tcp.to_bytes());
            bytes.extend_from_slice(&segment.payload);
            (0x86ddu16, bytes)
        }
        _ => unreachable!("segments are built with one family"),
    };
    // Destination, source, then each tag (TPID, TCI) and the ethertype after the last one.
    let mut out = Vec::with_capacity(14 + 4 * vlans.len() + network.len());
    out.extend_from_slice(&SERVER_MAC);
    out.extend_from_slice(&PEER_MAC);
    for (index, tpid) in vlans.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + index as u16).to_be_bytes());
    }
    out.extend_from_slice(&ether_type.to_be_bytes());
    out.extend_from_slice(&network);
    out
}

fn ext_number(ext: &Ext) -> u8 {
    match ext {
        Ext::HopByHop => 0,
        Ext::DestOpts => 60,
        Ext::Routing => 43,
    }
}

/// A named set of frames: one traffic class of the benchmark.
#[derive(Clone, Debug)]
pub struct Class {
    pub name: String,
    pub description: String,
    /// Whether the class counts as a SYN flood for the micro targets.
    pub flood: bool,
    pub frames: Vec<Vec<u8>>,
}

/// The generated classes, `count` frames each.
pub fn classes(count: usize, seed: u64) -> Vec<Class> {
    let mut rng = Rng::new(seed);
    let flood_v4 = (0..count)
        .map(|_| {
            let source = IpAddr::V4(rng.unicast_v4());
            frame(&[], &[], &Segment::syn(source, SMTP, &mut rng))
        })
        .collect();
    let flood_v6 = (0..count)
        .map(|_| {
            let source = IpAddr::V6(rng.unicast_v6());
            frame(&[], &[], &Segment::syn(source, SMTP, &mut rng))
        })
        .collect();
    // Spoofed from inside the relays' /24s: the adversarial case for the fast path, where the
    // block bitmap cannot answer and the trie must.
    let near = (0..count)
        .map(|_| {
            let block = if rng.below(2) == 0 {
                [198, 51, 100]
            } else {
                [203, 0, 113]
            };
            let source = Ipv4Addr::new(block[0], block[1], block[2], rng.below(256) as u8);
            frame(&[], &[], &Segment::syn(IpAddr::V4(source), SMTP, &mut rng))
        })
        .collect();
    let mix = (0..count).map(|i| mixed_frame(i, &mut rng)).collect();
    let worst = (0..count)
        .map(|_| {
            // QinQ (802.1ad outer, 802.1Q inner) and a full chain of 8 IPv6 extension headers,
            // from a source in the allowlisted /24 block of 2001:db8:: that is not itself
            // allowlisted: the longest parse plus a trie lookup that misses.
            let source = Ipv6Addr::new(
                0x2001,
                0xdb8,
                0xbad,
                rng.below(0x10000) as u16,
                0,
                0,
                0,
                rng.below(0x10000) as u16 | 1,
            );
            let chain = [
                Ext::HopByHop,
                Ext::DestOpts,
                Ext::Routing,
                Ext::DestOpts,
                Ext::Routing,
                Ext::DestOpts,
                Ext::Routing,
                Ext::DestOpts,
            ];
            frame(
                &[0x88a8, 0x8100],
                &chain,
                &Segment::syn(IpAddr::V6(source), SMTP, &mut rng),
            )
        })
        .collect();
    vec![
        Class {
            name: "flood-v4".into(),
            description: "SYNs to port 25 from random spoofed IPv4 sources".into(),
            flood: true,
            frames: flood_v4,
        },
        Class {
            name: "flood-v6".into(),
            description: "SYNs to port 25 from random spoofed IPv6 sources (2000::/3)".into(),
            flood: true,
            frames: flood_v6,
        },
        Class {
            name: "flood-v4-near".into(),
            description:
                "SYNs to port 25 spoofed from inside the relays' /24 blocks (fast path must ask the trie)"
                    .into(),
            flood: false,
            frames: near,
        },
        Class {
            name: "mix".into(),
            description: "relay SYNs, established segments, SYN-ACKs to our outgoing mail, other ports, 20% flood; 1/3 IPv6".into(),
            flood: false,
            frames: mix,
        },
        Class {
            name: "worst-case".into(),
            description: "QinQ + IPv6 with 8 extension headers, SYN to 25 from a non-allowlisted source in an allowlisted /24".into(),
            flood: false,
            frames: worst,
        },
    ]
}

/// One frame of the realistic mix; the shares are those of a mail server behind a filtering
/// service while a flood is going on.
fn mixed_frame(index: usize, rng: &mut Rng) -> Vec<u8> {
    let v6 = index % 3 == 2;
    let relay = |rng: &mut Rng| -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                1,
                0,
                0,
                0,
                0,
                1 + rng.below(50) as u16,
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + rng.below(14) as u8))
        }
    };
    let random = |rng: &mut Rng| -> IpAddr {
        if v6 {
            IpAddr::V6(rng.unicast_v6())
        } else {
            IpAddr::V4(rng.unicast_v4())
        }
    };
    let roll = rng.below(100);
    let segment = match roll {
        // Relay SYNs: allowlisted, pass.
        0..10 => Segment::syn(relay(rng), SMTP, rng),
        // Established flows: relays sending mail data (ACK+PSH with payload) and pure ACKs.
        10..60 => {
            let mut segment = Segment::syn(relay(rng), SMTP, rng);
            segment.syn = false;
            segment.ack_flag = true;
            segment.syn_options = false;
            segment.ack = rng.next_u64() as u32;
            if roll < 45 {
                segment.psh = true;
                segment.payload = vec![b'x'; 64 + rng.below(1200) as usize];
            }
            segment
        }
        // SYN-ACKs answering the server's own outgoing mail (source port 25).
        60..70 => {
            let mut segment = Segment::syn(random(rng), 32_768 + rng.below(28_000) as u16, rng);
            segment.source_port = SMTP;
            segment.ack_flag = true;
            segment.ack = rng.next_u64() as u32;
            segment
        }
        // Other services: submission, SSH, HTTPS.
        70..80 => {
            let port = [587, 22, 443][rng.below(3) as usize];
            Segment::syn(random(rng), port, rng)
        }
        // The flood share.
        _ => Segment::syn(random(rng), SMTP, rng),
    };
    frame(&[], &[], &segment)
}

/// An allowlist of `size` prefixes: the [`RELAYS`] first, then random prefixes of mixed
/// lengths. These are map contents only (never configured on an interface nor routed); they
/// are spread over the whole unicast space on purpose, the honest worst case for the fast path,
/// whose block bitmap then has many blocks set. 80% IPv4 (half /32, a fifth /25-/31, a quarter
/// /24, 5% /16-/23) and 20% IPv6 (/128, /64, /48, a few /32-/47).
pub fn allowlist(size: usize, seed: u64) -> Vec<Cidr> {
    let mut rng = Rng::new(seed ^ 0xa11_0a11);
    let mut set = std::collections::BTreeSet::new();
    let mut list = Vec::with_capacity(size);
    for relay in RELAYS.iter().take(size) {
        let cidr: Cidr = relay.parse().expect("relay prefix");
        set.insert(cidr);
        list.push(cidr);
    }
    while list.len() < size {
        let cidr = if rng.below(5) < 4 {
            let len = match rng.below(100) {
                0..50 => 32,
                50..70 => 25 + rng.below(7) as u8,
                70..95 => 24,
                _ => 16 + rng.below(8) as u8,
            };
            let bits = rng.unicast_v4().to_bits() & (u32::MAX << (32 - u32::from(len)));
            Cidr::V4 {
                addr: Ipv4Addr::from_bits(bits),
                prefix_len: len,
            }
        } else {
            let len = match rng.below(100) {
                0..40 => 128,
                40..70 => 64,
                70..95 => 48,
                _ => 32 + rng.below(16) as u8,
            };
            let bits = rng.unicast_v6().to_bits() & (u128::MAX << (128 - u32::from(len)));
            Cidr::V6 {
                addr: Ipv6Addr::from_bits(bits),
                prefix_len: len,
            }
        };
        // Keep the flood's spoofed sources honest: a random prefix never swallows the
        // documentation blocks the benchmark's verdict classes rely on.
        let clashes = ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1"]
            .iter()
            .any(|a| cidr.contains(a.parse().expect("address")));
        if !clashes && set.insert(cidr) {
            list.push(cidr);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_back_with_the_right_shapes() {
        for class in classes(50, 7) {
            for frame in &class.frames {
                let parsed = etherparse::SlicedPacket::from_ethernet(frame)
                    .unwrap_or_else(|e| panic!("{}: {e}", class.name));
                assert!(
                    matches!(parsed.transport, Some(etherparse::TransportSlice::Tcp(_))),
                    "{}: no TCP",
                    class.name
                );
            }
        }
    }

    #[test]
    fn worst_case_frames_are_qinq_with_eight_extension_headers() {
        let class = classes(1, 1).remove(4);
        let frame = &class.frames[0];
        assert_eq!(&frame[12..14], &[0x88, 0xa8]);
        assert_eq!(&frame[16..18], &[0x81, 0x00]);
        assert_eq!(&frame[20..22], &[0x86, 0xdd]);
        let parsed = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = parsed.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.extensions().first_header(), Some(IpNumber(0)));
    }

    #[test]
    fn allowlists_have_the_requested_size_and_start_with_the_relays() {
        let list = allowlist(1000, 3);
        assert_eq!(list.len(), 1000);
        assert_eq!(list[0], RELAYS[0].parse().unwrap());
        assert_eq!(allowlist(10, 3).len(), 10);
    }
}
