//! Benchmark traffic and allowlists, generated from a fixed seed so every run sees the same
//! bytes. Destinations are always the documentation addresses of the protected mail server
//! (192.0.2.1, 2001:db8::1); flood sources are random (spoofed) addresses. The frames only ever
//! exist in BPF_PROG_TEST_RUN and on a veth pair between two namespaces the benchmark creates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_user::cidr::Cidr;
use test_kit::frames::{ACK, Ext, Frame, PSH, SYN, TPID_8021AD, TPID_8021Q};
pub use test_kit::frames::{SERVER_MAC, SERVER_V4, SERVER_V6};

/// The protected port.
pub const SMTP: u16 = 25;

/// Placeholder MAC of the sending side; the replayer rewrites it to the veth peer's real one.
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

/// A Linux-like SYN option block: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
const LINUX_SYN_OPTIONS: [u8; 20] = [
    2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7,
];

/// A SYN (with Linux's options) from `source` to the server's `port`, from a random source
/// port with a random sequence number. The frames only ever go from the sender's namespace to
/// the server's: the replayer rewrites the placeholder MACs to the veth pair's real ones.
pub fn syn(source: IpAddr, port: u16, rng: &mut Rng) -> Frame {
    let mut frame = Frame::tcp_from(source, port, SYN);
    frame.source_port = 1024 + rng.below(64_000) as u16;
    frame.seq = rng.next_u64() as u32;
    frame.tcp_options = LINUX_SYN_OPTIONS.to_vec();
    frame.source_mac = PEER_MAC;
    frame.destination_mac = SERVER_MAC;
    frame
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
            syn(source, SMTP, &mut rng).bytes()
        })
        .collect();
    let flood_v6 = (0..count)
        .map(|_| {
            let source = IpAddr::V6(rng.unicast_v6());
            syn(source, SMTP, &mut rng).bytes()
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
            syn(IpAddr::V4(source), SMTP, &mut rng).bytes()
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
            let mut frame = syn(IpAddr::V6(source), SMTP, &mut rng);
            frame.vlans = vec![TPID_8021AD, TPID_8021Q];
            // Eight 8-byte headers: the walk bound, each as short as its type allows.
            frame.ipv6_ext = vec![
                Ext::HopByHop { units: 0 },
                Ext::DestOpts { units: 0 },
                Ext::Routing { units: 0 },
                Ext::DestOpts { units: 0 },
                Ext::Routing { units: 0 },
                Ext::DestOpts { units: 0 },
                Ext::Routing { units: 0 },
                Ext::DestOpts { units: 0 },
            ];
            frame.bytes()
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
    let frame = match roll {
        // Relay SYNs: allowlisted, pass.
        0..10 => syn(relay(rng), SMTP, rng),
        // Established flows: relays sending mail data (ACK+PSH with payload) and pure ACKs.
        10..60 => {
            let mut frame = syn(relay(rng), SMTP, rng);
            frame.flags = ACK;
            frame.tcp_options.clear();
            frame.ack_number = rng.next_u64() as u32;
            if roll < 45 {
                frame.flags |= PSH;
                frame.payload = vec![b'x'; 64 + rng.below(1200) as usize];
            }
            frame
        }
        // SYN-ACKs answering the server's own outgoing mail (source port 25).
        60..70 => {
            let mut frame = syn(random(rng), 32_768 + rng.below(28_000) as u16, rng);
            frame.source_port = SMTP;
            frame.flags |= ACK;
            frame.ack_number = rng.next_u64() as u32;
            frame
        }
        // Other services: submission, SSH, HTTPS.
        70..80 => {
            let port = [587, 22, 443][rng.below(3) as usize];
            syn(random(rng), port, rng)
        }
        // The flood share.
        _ => syn(random(rng), SMTP, rng),
    };
    frame.bytes()
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
        assert_eq!(
            ip.extensions().first_header(),
            Some(etherparse::IpNumber(0)),
            "the chain starts with hop-by-hop options"
        );
    }

    #[test]
    fn allowlists_have_the_requested_size_and_start_with_the_relays() {
        let list = allowlist(1000, 3);
        assert_eq!(list.len(), 1000);
        assert_eq!(list[0], RELAYS[0].parse().unwrap());
        assert_eq!(allowlist(10, 3).len(), 10);
    }
}
