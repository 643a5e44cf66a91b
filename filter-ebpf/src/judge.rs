//! The verdict rule of `docs/verdict-rule.md`, table by table: layer 2, IPv4, IPv6, TCP and the
//! rules against evasion (F1 to F3). It only judges; what the action makes of a denial is
//! decided in `main.rs`.

use filter_common::{Family, MAX_IPV6_EXT_HEADERS, PORT_PROTECTED};

use crate::{
    allowlist::{Source, allowlisted},
    maps::PORTS,
    parse::{
        self, Cursor, ETH_P_IPV4, ETH_P_IPV6, Extension, Frame, IPPROTO_TCP, TcpHead, TcpPorts,
    },
};

/// How a frame was judged: its counter row, what the rule says, and where its IP header starts
/// (for the sample and the RST).
pub struct Judgement {
    pub family: Family,
    pub outcome: Outcome,
    /// Offset of the IP header in the frame (of whatever follows layer 2 for non-IP frames).
    pub ip: usize,
}

/// What the rule says about a frame.
#[derive(Clone, Copy)]
pub enum Outcome {
    /// Not a protected SYN: pass untouched.
    Pass,
    /// Impossible header: pass, the kernel discards it.
    Malformed,
    /// Protected SYN, or a frame that could hide one, from an allowlisted source.
    SynAllowed,
    /// Protected SYN from any other source; its TCP header is `tcp` bytes into the frame.
    SynDenied { tcp: usize },
    /// A fragment or header chain that could hide a SYN (F1 to F3), from a source not
    /// allowlisted.
    EvasiveDenied,
}

impl Outcome {
    #[inline(always)]
    pub fn is_denied(self) -> bool {
        matches!(self, Outcome::SynDenied { .. } | Outcome::EvasiveDenied)
    }
}

/// Where the frame sits in a fragmented datagram, as far as the rule cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented (or an IPv6 atomic fragment).
    Whole,
    /// Offset 0 with more fragments to come: its transport header may be cut short.
    First,
    /// Offset 1 (8 bytes): can only serve to overwrite a TCP header (RFC 1858).
    OffsetOne,
}

#[inline(always)]
pub fn classify(frame: &Frame) -> Judgement {
    let mut cursor = frame.cursor();
    let ether_type = parse::ethernet(&mut cursor);
    let ip = cursor.offset();
    let (family, outcome) = match ether_type {
        None => (Family::Other, Outcome::Malformed),
        Some(ETH_P_IPV4) => (Family::Ipv4, ipv4(&mut cursor)),
        Some(ETH_P_IPV6) => (Family::Ipv6, ipv6(&mut cursor)),
        // ARP, anything else, and a third VLAN tag.
        Some(_) => (Family::Other, Outcome::Pass),
    };
    Judgement {
        family,
        outcome,
        ip,
    }
}

#[inline(always)]
fn ipv4(cursor: &mut Cursor) -> Outcome {
    let Some(ip) = parse::ipv4(cursor) else {
        return Outcome::Malformed;
    };
    if ip.protocol != IPPROTO_TCP {
        return Outcome::Pass;
    }
    let fragment = match ip.fragment_offset() {
        0 if ip.more_fragments() => Fragment::First,
        0 => Fragment::Whole,
        1 => Fragment::OffsetOne,
        // A later fragment carries no TCP header; reassembly rejects overlaps.
        _ => return Outcome::Pass,
    };
    tcp(cursor, fragment, Source::V4(ip.saddr))
}

#[inline(always)]
fn ipv6(cursor: &mut Cursor) -> Outcome {
    let Some(ip) = parse::ipv6(cursor) else {
        return Outcome::Malformed;
    };
    let source = Source::V6(ip.saddr);
    let mut next_header = ip.next_header;
    let mut fragment = Fragment::Whole;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let (header, is_fragment, len) = match parse::ipv6_extension(cursor, next_header) {
            Extension::End => break,
            Extension::Truncated => return truncated_chain(fragment, source),
            Extension::Header {
                header,
                is_fragment,
                len,
            } => (header, is_fragment, len),
        };
        if is_fragment {
            fragment = match header.fragment_offset() {
                0 if header.more_fragments() => Fragment::First,
                // An atomic fragment header after a first-fragment one does not make the
                // datagram whole: the outer header already queued this frame for
                // reassembly, and the rest of the chain comes later.
                0 => fragment,
                1 if header.next_header == IPPROTO_TCP => {
                    return deny_unless_allowlisted(source, Outcome::EvasiveDenied);
                }
                _ => return Outcome::Pass,
            };
        }
        next_header = header.next_header;
        if !cursor.skip(len) {
            return truncated_chain(fragment, source);
        }
    }
    if next_header == IPPROTO_TCP {
        tcp(cursor, fragment, source)
    } else if parse::is_extension(next_header) {
        // F3: a longer chain than we walk; the kernel would still find the TCP header.
        deny_unless_allowlisted(source, Outcome::EvasiveDenied)
    } else {
        Outcome::Pass
    }
}

/// The header chain ends before its last header does. In a first fragment the rest may come in
/// the next one (F3: RFC 7112 forbids it, attackers do it anyway); elsewhere the kernel drops
/// it.
#[inline(always)]
fn truncated_chain(fragment: Fragment, source: Source) -> Outcome {
    if fragment == Fragment::First {
        deny_unless_allowlisted(source, Outcome::EvasiveDenied)
    } else {
        Outcome::Malformed
    }
}

/// Judges the TCP segment at the cursor, whose limit is the datagram's end.
#[inline(always)]
fn tcp(cursor: &Cursor, fragment: Fragment, source: Source) -> Outcome {
    if fragment == Fragment::OffsetOne {
        // F2, whatever the port.
        return deny_unless_allowlisted(source, Outcome::EvasiveDenied);
    }
    let (ports, denied) = match cursor.peek::<TcpHead>() {
        Some(head) if !head.is_syn() => return Outcome::Pass,
        Some(head) => (
            Some(&head.ports),
            Outcome::SynDenied {
                tcp: cursor.offset(),
            },
        ),
        // A whole segment too short for the flags: the kernel discards it.
        None if fragment != Fragment::First => return Outcome::Malformed,
        // F1, a tiny first fragment (RFC 1858): the flags come in a later fragment. It passes
        // only when the port is readable and not protected, or the source is allowlisted.
        None => (cursor.peek::<TcpPorts>(), Outcome::EvasiveDenied),
    };
    if let Some(ports) = ports
        && !port_protected(ports.dest_port())
    {
        return Outcome::Pass;
    }
    deny_unless_allowlisted(source, denied)
}

#[inline(always)]
fn port_protected(port: u16) -> bool {
    if cfg!(feature = "off-ports") {
        return port == 25;
    }
    matches!(PORTS.get(u32::from(port)), Some(&PORT_PROTECTED))
}

#[inline(always)]
fn deny_unless_allowlisted(source: Source, denied: Outcome) -> Outcome {
    if allowlisted(source) {
        Outcome::SynAllowed
    } else {
        denied
    }
}
