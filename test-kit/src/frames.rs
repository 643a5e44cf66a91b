//! Test frames built from etherparse's header types, with knobs for the shapes the verdict
//! rule cares about (VLAN tags, IPv4 options, IPv6 extension chains, fragments, TCP flags).
//! The IPv4 and TCP checksums are right, so a frame that gets past XDP is treated by the
//! kernel like the real thing (the benchmark's flood relies on that).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header,
    SingleVlanHeader, TcpHeader,
};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// The mail server: destination of every test frame.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Placeholder MACs: the server's, and the sender's unless a frame sets its own.
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SENDER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

/// An IPv6 extension header in a chain.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options with `units` extra 8-byte units (PadN filled).
    HopByHop {
        units: u8,
    },
    Routing {
        units: u8,
    },
    DestOpts {
        units: u8,
    },
    /// Authentication header with `words` extra 4-byte words after the minimum 12 bytes.
    Ah {
        words: u8,
    },
    /// Fragment header; `offset` in 8-byte units.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    fn number(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::DestOpts { .. } => 60,
            Ext::Ah { .. } => 51,
            Ext::Fragment { .. } => 44,
        }
    }

    fn bytes(&self, next_header: u8) -> Vec<u8> {
        match *self {
            Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
                let len = (usize::from(units) + 1) * 8;
                let mut bytes = vec![0u8; len];
                bytes[0] = next_header;
                bytes[1] = units;
                if matches!(self, Ext::Routing { .. }) {
                    // Type 4 (segment routing) with segments left 0: ignored by the kernel.
                    bytes[2] = 4;
                } else {
                    // One PadN option covering the rest of the header.
                    bytes[2] = 1;
                    bytes[3] = (len - 4) as u8;
                }
                bytes
            }
            Ext::Ah { words } => {
                let len = 12 + usize::from(words) * 4;
                let mut bytes = vec![0u8; len];
                bytes[0] = next_header;
                bytes[1] = (len / 4 - 2) as u8;
                bytes
            }
            Ext::Fragment { offset, more } => Ipv6FragmentHeader::new(
                IpNumber(next_header),
                IpFragOffset::try_new(offset).expect("13-bit offset"),
                more,
                0x1234_5678,
            )
            .to_bytes()
            .to_vec(),
        }
    }
}

/// A TCP-over-IP test frame. Defaults: no VLAN, no options, not fragmented, no payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub vlans: Vec<u16>,
    pub ipv4_options: Vec<u8>,
    pub ipv4_fragment: Option<(u16, bool)>,
    pub ipv6_ext: Vec<Ext>,
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack_number: u32,
    pub flags: u8,
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// Keep only this many bytes of the transport segment (lengths stay consistent).
    pub transport_len: Option<usize>,
    pub source_mac: [u8; 6],
    pub destination_mac: [u8; 6],
}

impl Frame {
    /// A TCP segment with `flags` from `source` (text) to the server's `port`.
    pub fn tcp(source: &str, port: u16, flags: u8) -> Frame {
        Frame::tcp_from(source.parse().expect("test source address"), port, flags)
    }

    /// A TCP segment with `flags` from `source` to the server's `port`.
    pub fn tcp_from(source: IpAddr, port: u16, flags: u8) -> Frame {
        let destination = match source {
            IpAddr::V4(_) => IpAddr::V4(SERVER_V4),
            IpAddr::V6(_) => IpAddr::V6(SERVER_V6),
        };
        Frame {
            source,
            destination,
            vlans: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_fragment: None,
            ipv6_ext: Vec::new(),
            protocol: 6,
            source_port: 40_000,
            destination_port: port,
            seq: 1000,
            ack_number: 0,
            flags,
            tcp_options: Vec::new(),
            payload: Vec::new(),
            transport_len: None,
            source_mac: SENDER_MAC,
            destination_mac: SERVER_MAC,
        }
    }

    /// A plain SYN from `source` to the server's `port`.
    pub fn syn(source: &str, port: u16) -> Frame {
        Frame::tcp(source, port, SYN)
    }

    pub fn vlan(mut self, tpid: u16) -> Frame {
        self.vlans.push(tpid);
        self
    }

    pub fn ipv4_options(mut self, options: &[u8]) -> Frame {
        self.ipv4_options = options.to_vec();
        self
    }

    /// IPv4 fragment fields: `offset` in 8-byte units, `more` = MF.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Frame {
        self.ipv4_fragment = Some((offset, more));
        self
    }

    pub fn ext(mut self, ext: Ext) -> Frame {
        self.ipv6_ext.push(ext);
        self
    }

    pub fn protocol(mut self, protocol: u8) -> Frame {
        self.protocol = protocol;
        self
    }

    pub fn tcp_options(mut self, options: &[u8]) -> Frame {
        self.tcp_options = options.to_vec();
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    pub fn transport_len(mut self, len: usize) -> Frame {
        self.transport_len = Some(len);
        self
    }

    fn transport(&self) -> Vec<u8> {
        let mut tcp = TcpHeader::new(self.source_port, self.destination_port, self.seq, 64_240);
        tcp.acknowledgment_number = self.ack_number;
        tcp.fin = self.flags & FIN != 0;
        tcp.syn = self.flags & SYN != 0;
        tcp.rst = self.flags & RST != 0;
        tcp.psh = self.flags & PSH != 0;
        tcp.ack = self.flags & ACK != 0;
        tcp.urg = self.flags & URG != 0;
        tcp.ece = self.flags & ECE != 0;
        tcp.cwr = self.flags & CWR != 0;
        tcp.set_options_raw(&self.tcp_options)
            .expect("TCP options are a multiple of 4, at most 40 bytes");
        tcp.checksum = match (self.source, self.destination) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                tcp.calc_checksum_ipv4_raw(source.octets(), destination.octets(), &self.payload)
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                tcp.calc_checksum_ipv6_raw(source.octets(), destination.octets(), &self.payload)
            }
            _ => panic!("source and destination must be the same family"),
        }
        .expect("TCP checksum");
        let mut bytes = tcp.to_bytes().to_vec();
        bytes.extend_from_slice(&self.payload);
        if let Some(len) = self.transport_len {
            bytes.truncate(len);
        }
        bytes
    }

    /// The frame's bytes, Ethernet header first.
    pub fn bytes(&self) -> Vec<u8> {
        let transport = self.transport();
        let (ether_type, network) = match (self.source, self.destination) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                let mut ip = Ipv4Header::new(
                    0,
                    64,
                    IpNumber(self.protocol),
                    source.octets(),
                    destination.octets(),
                )
                .expect("header");
                ip.options = self
                    .ipv4_options
                    .as_slice()
                    .try_into()
                    .expect("IPv4 options: multiple of 4, at most 40");
                ip.set_payload_len(transport.len()).expect("payload fits");
                if let Some((offset, more)) = self.ipv4_fragment {
                    ip.dont_fragment = false;
                    ip.more_fragments = more;
                    ip.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
                }
                ip.header_checksum = ip.calc_header_checksum();
                let mut bytes = ip.to_bytes().to_vec();
                bytes.extend_from_slice(&transport);
                (EtherType::IPV4, bytes)
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                let mut chain = Vec::new();
                for (index, ext) in self.ipv6_ext.iter().enumerate() {
                    let next = self
                        .ipv6_ext
                        .get(index + 1)
                        .map(Ext::number)
                        .unwrap_or(self.protocol);
                    chain.extend(ext.bytes(next));
                }
                let first = self
                    .ipv6_ext
                    .first()
                    .map(Ext::number)
                    .unwrap_or(self.protocol);
                let header = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: (chain.len() + transport.len()) as u16,
                    next_header: IpNumber(first),
                    hop_limit: 64,
                    source: source.octets(),
                    destination: destination.octets(),
                };
                let mut bytes = header.to_bytes().to_vec();
                bytes.extend(chain);
                bytes.extend_from_slice(&transport);
                (EtherType::IPV6, bytes)
            }
            _ => panic!("source and destination must be the same family"),
        };
        ethernet_between(
            self.destination_mac,
            self.source_mac,
            &self.vlans,
            ether_type,
            &network,
        )
    }
}

/// An Ethernet frame from the sender to the server (with VLAN tags, outermost first, any TPID)
/// around `payload`.
pub fn ethernet(vlans: &[u16], ether_type: EtherType, payload: &[u8]) -> Vec<u8> {
    ethernet_between(SERVER_MAC, SENDER_MAC, vlans, ether_type, payload)
}

fn ethernet_between(
    destination: [u8; 6],
    source: [u8; 6],
    vlans: &[u16],
    ether_type: EtherType,
    payload: &[u8],
) -> Vec<u8> {
    let outer = vlans
        .first()
        .map(|tpid| EtherType(*tpid))
        .unwrap_or(ether_type);
    let mut bytes = Ethernet2Header {
        source,
        destination,
        ether_type: outer,
    }
    .to_bytes()
    .to_vec();
    for (index, _) in vlans.iter().enumerate() {
        let inner = vlans
            .get(index + 1)
            .map(|tpid| EtherType(*tpid))
            .unwrap_or(ether_type);
        let tag = SingleVlanHeader {
            pcp: Default::default(),
            drop_eligible_indicator: false,
            vlan_id: etherparse::VlanId::try_new(100 + index as u16).expect("vlan id"),
            ether_type: inner,
        };
        bytes.extend_from_slice(&tag.to_bytes());
    }
    bytes.extend_from_slice(payload);
    bytes
}
