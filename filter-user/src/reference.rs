//! Reference classifier: `docs/verdict-rule.md` written as plain userspace Rust.
//!
//! It exists to check the XDP program, so it was written from the rule text alone, not from
//! the program. Header parsing goes through etherparse wherever etherparse can express the
//! rule; what the rule says and etherparse does not (bounds by the IP length fields, the walk
//! bound, truncation, F1 to F3) is coded here by hand. Where etherparse's semantics differ from
//! the rule, the code says so at that spot:
//! - 0x9100 is not a VLAN tag for the rule (etherparse's packet slicers treat it as one), so
//!   the tag loop below uses only the single-tag slice and decides itself what a tag is;
//! - an authentication header with payload length 0 is 8 bytes by the rule; etherparse
//!   rejects it;
//! - etherparse before 0.20 decoded the IPv6 fragment offset and M flag from the wrong bits
//!   (its issue #150); the workspace pins 0.21 and a unit test below pins the RFC 8200 layout;
//! - TCP needs only 14 bytes by the rule; etherparse wants a whole header (data offset >= 5
//!   and all options present).

use std::{collections::BTreeSet, net::IpAddr};

use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice,
};
use filter_common::{Action, Family, FamilyCounters, MAX_IPV6_EXT_HEADERS};

use crate::{cidr::Cidr, filter::Counters};

/// How many VLAN tags (802.1Q or 802.1ad, in any order) are looked through.
pub const MAX_VLAN_TAGS: usize = 2;

/// TCP bytes needed to read the ports and the flags (flags are byte 13).
const TCP_FLAGS_LEN: usize = 14;
/// TCP bytes needed to read the destination port.
const TCP_PORTS_LEN: usize = 4;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What the program is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Protected destination ports.
    pub ports: BTreeSet<u16>,
    /// Allowlisted source prefixes (canonical [`Cidr`]s, as the loader stores them).
    pub allow: BTreeSet<Cidr>,
    pub action: RuleAction,
}

/// The actions the rule defines. `filter_common::Action` also has `Reject` (answer with a RST
/// through `XDP_TX`), which docs/verdict-rule.md does not describe yet; until it does, the
/// reference cannot model it, and leaving it out of this type makes that impossible to miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Drop,
    Monitor,
}

impl From<RuleAction> for Action {
    fn from(action: RuleAction) -> Action {
        match action {
            RuleAction::Drop => Action::Drop,
            RuleAction::Monitor => Action::Monitor,
        }
    }
}

impl Policy {
    fn protects(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// Longest-prefix match only decides membership, so "any prefix contains it" is the same.
    /// `Cidr::contains` looks an IPv4-mapped source up as IPv4 only, as the rule says.
    fn allows(&self, source: IpAddr) -> bool {
        self.allow.iter().any(|cidr| cidr.contains(source))
    }
}

/// The counter (besides `frames`) that a frame increments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    None,
    SynAllowed,
    SynDropped,
    SynWouldDrop,
    EvasiveDropped,
    Malformed,
}

/// The rule's answer for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `XDP_PASS` (true) or `XDP_DROP` (false).
    pub pass: bool,
    /// The counter row whose `frames` goes up.
    pub family: Family,
    pub counter: Counter,
}

impl Verdict {
    /// Adds this frame to `counters` the way the program counts it.
    pub fn count(&self, counters: &mut Counters) {
        let row: &mut FamilyCounters = &mut counters.0[self.family as usize];
        row.bump(filter_common::Counter::Frames);
        match self.counter {
            Counter::None => {}
            Counter::SynAllowed => row.bump(filter_common::Counter::SynAllowed),
            Counter::SynDropped => row.bump(filter_common::Counter::SynDropped),
            Counter::SynWouldDrop => row.bump(filter_common::Counter::SynWouldDrop),
            Counter::EvasiveDropped => row.bump(filter_common::Counter::EvasiveDropped),
            Counter::Malformed => row.bump(filter_common::Counter::Malformed),
        }
    }
}

/// What the rule finds in a frame before the allowlist and the action are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finding {
    /// Nothing to judge: PASS, no counter.
    Pass,
    /// An impossible or truncated header: PASS, `malformed`.
    Malformed,
    /// A SYN (SYN set, ACK clear) to a protected port.
    Syn(IpAddr),
    /// F1, F2 or F3: something that could hide such a SYN.
    Evasive(IpAddr),
}

/// The row of `docs/verdict-rule.md` that decided a frame. The program cannot report this;
/// tests use it to show that their frames reach every row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// Frame shorter than an Ethernet header.
    EthernetShort,
    /// A VLAN tag cut short by the end of the frame.
    VlanTruncated,
    /// A third VLAN tag.
    ThirdVlanTag,
    /// Not IPv4 or IPv6 (after up to two tags).
    NotIp,
    /// Under 20 bytes, version not 4, IHL < 5 (or options past the end, which implies the next).
    Ipv4BadHeader,
    /// T < H or T larger than the bytes after layer 2.
    Ipv4BadTotalLength,
    Ipv4NotTcp,
    /// Fragment offset >= 2.
    Ipv4LaterFragment,
    Ipv4OffsetOne,
    /// Under 40 bytes or version not 6.
    Ipv6BadHeader,
    /// 40 + P larger than the bytes after layer 2.
    Ipv6BadPayloadLength,
    /// An extension header cut by the payload end, not in a first fragment.
    Ipv6ChainTruncated,
    /// An extension header cut by the payload end in a first fragment (F3).
    Ipv6FirstFragmentChainTruncated,
    /// The chain goes on past the walk bound (F3).
    Ipv6ChainTooLong,
    /// Fragment header with offset >= 2, or offset 1 not followed by TCP.
    Ipv6LaterFragment,
    /// Fragment header with offset 1 followed by TCP (F2).
    Ipv6OffsetOne,
    /// The chain ends in a header other than TCP.
    Ipv6NotTcp,
    /// 14 or more TCP bytes, not a SYN (SYN clear or ACK set).
    TcpNotSyn,
    /// A SYN to a port that is not protected.
    TcpOpenPort,
    /// A SYN to a protected port: allowlist and action decide.
    TcpProtectedSyn,
    /// Fewer than 14 TCP bytes outside a first fragment.
    TcpShort,
    /// Tiny first fragment whose readable port is not protected (F1, passes).
    TinyFirstFragmentOpenPort,
    /// Tiny first fragment otherwise (F1).
    TinyFirstFragment,
}

/// Classifies one frame (Ethernet header first) under `policy`.
pub fn classify(frame: &[u8], policy: &Policy) -> Verdict {
    classify_with_rule(frame, policy).0
}

/// Classifies one frame and names the rule row that decided it.
pub fn classify_with_rule(frame: &[u8], policy: &Policy) -> (Verdict, Rule) {
    let (family, (finding, rule)) = judge(frame, policy);
    let (pass, counter) = match finding {
        Finding::Pass => (true, Counter::None),
        Finding::Malformed => (true, Counter::Malformed),
        Finding::Syn(source) | Finding::Evasive(source) if policy.allows(source) => {
            (true, Counter::SynAllowed)
        }
        Finding::Syn(_) | Finding::Evasive(_) if policy.action == RuleAction::Monitor => {
            (true, Counter::SynWouldDrop)
        }
        Finding::Syn(_) => (false, Counter::SynDropped),
        Finding::Evasive(_) => (false, Counter::EvasiveDropped),
    };
    let verdict = Verdict {
        pass,
        family,
        counter,
    };
    (verdict, rule)
}

/// Classifies every frame and sums the counters as the program would.
pub fn tally<'a>(frames: impl IntoIterator<Item = &'a [u8]>, policy: &Policy) -> Counters {
    let mut counters = Counters::default();
    for frame in frames {
        classify(frame, policy).count(&mut counters);
    }
    counters
}

type Judged = (Finding, Rule);

fn judge(frame: &[u8], policy: &Policy) -> (Family, Judged) {
    let Ok(ethernet) = Ethernet2HeaderSlice::from_slice(frame) else {
        return (Family::Other, (Finding::Malformed, Rule::EthernetShort));
    };
    let mut ether_type = ethernet.ether_type();
    let mut rest = &frame[ethernet.slice().len()..];
    let mut tags = 0;
    // Only these two are tags for the rule; etherparse would also take 0x9100.
    while ether_type == EtherType::VLAN_TAGGED_FRAME || ether_type == EtherType::PROVIDER_BRIDGING {
        if tags == MAX_VLAN_TAGS {
            return (Family::Other, (Finding::Pass, Rule::ThirdVlanTag));
        }
        let Ok(tag) = SingleVlanHeaderSlice::from_slice(rest) else {
            return (Family::Other, (Finding::Malformed, Rule::VlanTruncated));
        };
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
        tags += 1;
    }
    match ether_type {
        EtherType::IPV4 => (Family::Ipv4, ipv4(rest, policy)),
        EtherType::IPV6 => (Family::Ipv6, ipv6(rest, policy)),
        _ => (Family::Other, (Finding::Pass, Rule::NotIp)),
    }
}

fn ipv4(packet: &[u8], policy: &Policy) -> Judged {
    // Errors: under 20 bytes, version != 4, IHL < 5, or the options cut off by the end of the
    // buffer. The last one implies T < H or T > buffer, so all of them are malformed.
    let Ok(header) = Ipv4HeaderSlice::from_slice(packet) else {
        return (Finding::Malformed, Rule::Ipv4BadHeader);
    };
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len || total_len > packet.len() {
        return (Finding::Malformed, Rule::Ipv4BadTotalLength);
    }
    if header.protocol() != IpNumber::TCP {
        return (Finding::Pass, Rule::Ipv4NotTcp);
    }
    let source = IpAddr::V4(header.source_addr());
    match header.fragments_offset().value() {
        // Bytes past T are never read: the kernel trims them before anything else looks.
        0 => tcp(
            &packet[header_len..total_len],
            header.more_fragments(),
            source,
            policy,
        ),
        1 => (Finding::Evasive(source), Rule::Ipv4OffsetOne), // F2
        _ => (Finding::Pass, Rule::Ipv4LaterFragment),
    }
}

fn ipv6(packet: &[u8], policy: &Policy) -> Judged {
    let Ok(header) = Ipv6HeaderSlice::from_slice(packet) else {
        return (Finding::Malformed, Rule::Ipv6BadHeader);
    };
    let end = header.slice().len() + usize::from(header.payload_length());
    if end > packet.len() {
        return (Finding::Malformed, Rule::Ipv6BadPayloadLength);
    }
    let source = IpAddr::V6(header.source_addr());
    // Everything is bounded by the payload length, not by the buffer.
    let payload = &packet[header.slice().len()..end];
    let mut next = header.next_header();
    let mut offset = 0;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let rest = &payload[offset..];
        let header_len = match next {
            IpNumber::TCP => return tcp(rest, first_fragment, source, policy),
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS => match Ipv6RawExtHeaderSlice::from_slice(rest) {
                Ok(ext) => {
                    next = ext.next_header();
                    ext.slice().len()
                }
                Err(_) => return truncated_chain(first_fragment, source),
            },
            IpNumber::AUTHENTICATION_HEADER => match auth_header(rest) {
                Some((next_header, len)) => {
                    next = next_header;
                    len
                }
                None => return truncated_chain(first_fragment, source),
            },
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                // A fragment header that does not fit whole is not read (rule: a header must
                // fit before it is interpreted).
                let Ok(fragment) = Ipv6FragmentHeaderSlice::from_slice(rest) else {
                    return truncated_chain(first_fragment, source);
                };
                match fragment.fragment_offset().value() {
                    // Once a first fragment, always: a later atomic fragment header does not
                    // make the datagram whole (see "Decisions" in the rule).
                    0 => first_fragment |= fragment.more_fragments(),
                    1 if fragment.next_header() == IpNumber::TCP => {
                        return (Finding::Evasive(source), Rule::Ipv6OffsetOne); // F2
                    }
                    _ => return (Finding::Pass, Rule::Ipv6LaterFragment),
                }
                next = fragment.next_header();
                fragment.slice().len()
            }
            _ => return (Finding::Pass, Rule::Ipv6NotTcp),
        };
        offset += header_len;
    }
    match next {
        IpNumber::TCP => tcp(&payload[offset..], first_fragment, source, policy),
        // F3: the chain goes on past the walk bound.
        next if is_walked_extension(next) => (Finding::Evasive(source), Rule::Ipv6ChainTooLong),
        _ => (Finding::Pass, Rule::Ipv6NotTcp),
    }
}

/// The five extension headers the walk steps over.
fn is_walked_extension(next: IpNumber) -> bool {
    matches!(
        next,
        IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS
            | IpNumber::AUTHENTICATION_HEADER
            | IpNumber::IPV6_FRAGMENTATION_HEADER
    )
}

/// An authentication header's next header and length, or `None` when it does not fit.
fn auth_header(rest: &[u8]) -> Option<(IpNumber, usize)> {
    match IpAuthHeaderSlice::from_slice(rest) {
        Ok(auth) => Some((auth.next_header(), auth.slice().len())),
        // etherparse rejects payload length 0 (and so needs 12 bytes); the rule's length
        // formula gives 8 bytes for it, and the walk goes on.
        Err(_) if rest.len() >= 8 && rest[1] == 0 => Some((IpNumber(rest[0]), 8)),
        Err(_) => None,
    }
}

/// An extension header that does not fit in the payload: F3 in a first fragment (the rest of
/// the chain, and the TCP header, come in a later fragment), otherwise malformed.
fn truncated_chain(first_fragment: bool, source: IpAddr) -> Judged {
    if first_fragment {
        (
            Finding::Evasive(source),
            Rule::Ipv6FirstFragmentChainTruncated,
        )
    } else {
        (Finding::Malformed, Rule::Ipv6ChainTruncated)
    }
}

fn tcp(segment: &[u8], first_fragment: bool, source: IpAddr, policy: &Policy) -> Judged {
    if segment.len() >= TCP_FLAGS_LEN {
        let (destination_port, syn, ack) = match TcpHeaderSlice::from_slice(segment) {
            Ok(tcp) => (tcp.destination_port(), tcp.syn(), tcp.ack()),
            // The rule reads ports and flags only; etherparse also wants the data offset and
            // the options to be whole.
            Err(_) => (
                u16::from_be_bytes([segment[2], segment[3]]),
                segment[13] & TCP_SYN != 0,
                segment[13] & TCP_ACK != 0,
            ),
        };
        if !syn || ack {
            (Finding::Pass, Rule::TcpNotSyn)
        } else if !policy.protects(destination_port) {
            (Finding::Pass, Rule::TcpOpenPort)
        } else {
            (Finding::Syn(source), Rule::TcpProtectedSyn)
        }
    } else if first_fragment {
        // F1: a first fragment too short to show the flags.
        if segment.len() >= TCP_PORTS_LEN
            && !policy.protects(u16::from_be_bytes([segment[2], segment[3]]))
        {
            (Finding::Pass, Rule::TinyFirstFragmentOpenPort)
        } else {
            (Finding::Evasive(source), Rule::TinyFirstFragment)
        }
    } else {
        (Finding::Malformed, Rule::TcpShort)
    }
}

#[cfg(test)]
mod tests {
    //! Frames here are written byte by byte (not with etherparse's builders), so the tests
    //! check the parsing, not a round trip through the same library.
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);
    const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 10);
    const DST4: [u8; 4] = [203, 0, 113, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn policy(action: RuleAction) -> Policy {
        Policy {
            ports: [25, 587].into(),
            allow: [Cidr::host(IpAddr::V4(SRC4)), Cidr::host(IpAddr::V6(SRC6))].into(),
            action,
        }
    }

    fn tcp(dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    fn ether(ether_type: u16, tags: &[u16], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let mut types: Vec<u16> = tags.to_vec();
        types.push(ether_type);
        f.extend_from_slice(&types[0].to_be_bytes());
        for (i, next) in types.iter().skip(1).enumerate() {
            f.extend_from_slice(&(100 + i as u16).to_be_bytes()); // TCI
            f.extend_from_slice(&next.to_be_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    /// IPv4 header with `options` (a multiple of 4 bytes), then `payload`.
    fn ipv4(src: Ipv4Addr, flags_offset: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let h = 20 + options.len();
        let mut p = vec![0x40 | (h / 4) as u8, 0];
        p.extend_from_slice(&((h + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&flags_offset.to_be_bytes());
        p.extend_from_slice(&[64, 6, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&DST4);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    /// IPv6 header with next header `next`, then `payload` (extension headers and TCP).
    fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&DST6);
        p.extend_from_slice(payload);
        p
    }

    /// An 8-byte options header (hop-by-hop, routing, dest-opts) with padding.
    fn opts8(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// A fragment header, laid out as RFC 8200 4.5 says.
    fn frag(next: u8, offset: u16, more: bool) -> Vec<u8> {
        let word = (offset << 3) | u16::from(more);
        let w = word.to_be_bytes();
        vec![next, 0, w[0], w[1], 0, 0, 0, 7]
    }

    fn v4_syn(src: Ipv4Addr, dport: u16) -> Vec<u8> {
        ether(0x0800, &[], &ipv4(src, 0, &[], &tcp(dport, SYN)))
    }

    fn v6_syn(src: Ipv6Addr, dport: u16) -> Vec<u8> {
        ether(0x86dd, &[], &ipv6(src, 6, &tcp(dport, SYN)))
    }

    fn check(frame: &[u8], action: RuleAction, pass: bool, family: Family, counter: Counter) {
        assert_eq!(
            classify(frame, &policy(action)),
            Verdict {
                pass,
                family,
                counter
            },
            "frame {frame:02x?}"
        );
    }

    fn drop4(frame: &[u8]) {
        check(
            frame,
            RuleAction::Drop,
            false,
            Family::Ipv4,
            Counter::SynDropped,
        );
    }

    fn evasive4(frame: &[u8]) {
        check(
            frame,
            RuleAction::Drop,
            false,
            Family::Ipv4,
            Counter::EvasiveDropped,
        );
    }

    #[test]
    fn plain_syns() {
        drop4(&v4_syn(OTHER4, 25));
        drop4(&v4_syn(OTHER4, 587));
        check(
            &v4_syn(SRC4, 25),
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::SynAllowed,
        );
        check(
            &v4_syn(OTHER4, 26),
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::None,
        );
        let v6 = v6_syn(OTHER6, 25);
        check(
            &v6,
            RuleAction::Drop,
            false,
            Family::Ipv6,
            Counter::SynDropped,
        );
        check(
            &v6_syn(SRC6, 25),
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::SynAllowed,
        );
        check(
            &v6,
            RuleAction::Monitor,
            true,
            Family::Ipv6,
            Counter::SynWouldDrop,
        );
    }

    #[test]
    fn flags() {
        for flags in 0..=255u8 {
            let frame = ether(0x0800, &[], &ipv4(OTHER4, 0, &[], &tcp(25, flags)));
            let is_syn = flags & SYN != 0 && flags & ACK == 0;
            let verdict = classify(&frame, &policy(RuleAction::Drop));
            assert_eq!(verdict.pass, !is_syn, "flags {flags:#04x}");
        }
    }

    #[test]
    fn layer2() {
        let ip = ipv4(OTHER4, 0, &[], &tcp(25, SYN));
        check(
            &[0; 13],
            RuleAction::Drop,
            true,
            Family::Other,
            Counter::Malformed,
        );
        check(
            &[],
            RuleAction::Drop,
            true,
            Family::Other,
            Counter::Malformed,
        );
        drop4(&ether(0x0800, &[0x8100], &ip));
        drop4(&ether(0x0800, &[0x88a8, 0x8100], &ip));
        drop4(&ether(0x0800, &[0x8100, 0x88a8], &ip));
        drop4(&ether(0x0800, &[0x8100, 0x8100], &ip));
        let three = ether(0x0800, &[0x88a8, 0x8100, 0x8100], &ip);
        check(&three, RuleAction::Drop, true, Family::Other, Counter::None);
        // 0x9100 is not a tag for the rule.
        let q9100 = ether(0x0800, &[0x9100], &ip);
        check(&q9100, RuleAction::Drop, true, Family::Other, Counter::None);
        let cut = ether(0x0800, &[0x8100], &[]);
        check(
            &cut[..16],
            RuleAction::Drop,
            true,
            Family::Other,
            Counter::Malformed,
        );
        check(
            &cut[..18],
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::Malformed,
        );
        let arp = ether(0x0806, &[], &ip);
        check(&arp, RuleAction::Drop, true, Family::Other, Counter::None);
    }

    #[test]
    fn ipv4_header_checks() {
        let good = v4_syn(OTHER4, 25);
        let mut version = good.clone();
        version[14] = 0x55;
        check(
            &version,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::Malformed,
        );
        let mut ihl = good.clone();
        ihl[14] = 0x44;
        check(
            &ihl,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::Malformed,
        );
        for cut in 14..good.len() {
            check(
                &good[..cut],
                RuleAction::Drop,
                true,
                Family::Ipv4,
                Counter::Malformed,
            );
        }
        // T < H
        let mut short_t = good.clone();
        short_t[16..18].copy_from_slice(&19u16.to_be_bytes());
        check(
            &short_t,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::Malformed,
        );
        // T = H + 13: one byte short of the flags.
        let mut t13 = good.clone();
        t13[16..18].copy_from_slice(&33u16.to_be_bytes());
        check(
            &t13,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::Malformed,
        );
        // T = H + 14 with a trailer: judged on the first 14 bytes.
        let mut t14 = good.clone();
        t14[16..18].copy_from_slice(&34u16.to_be_bytes());
        drop4(&t14);
        // Bytes past T are ignored even if they look like anything.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0xff; 30]);
        drop4(&padded);
        let mut udp = good.clone();
        udp[23] = 17;
        check(&udp, RuleAction::Drop, true, Family::Ipv4, Counter::None);
    }

    #[test]
    fn ipv4_options_every_ihl() {
        for words in 0..=10usize {
            let options = vec![1u8; words * 4]; // NOPs
            drop4(&ether(
                0x0800,
                &[],
                &ipv4(OTHER4, 0, &options, &tcp(25, SYN)),
            ));
        }
    }

    #[test]
    fn ipv4_fragments() {
        const MF: u16 = 0x2000;
        let syn = tcp(25, SYN);
        // atomic and DF: whole packets
        drop4(&ether(0x0800, &[], &ipv4(OTHER4, 0x4000, &[], &syn)));
        // first fragment with the whole header: judged as usual
        drop4(&ether(0x0800, &[], &ipv4(OTHER4, MF, &[], &syn)));
        // F1
        for len in 0..14 {
            evasive4(&ether(0x0800, &[], &ipv4(OTHER4, MF, &[], &syn[..len])));
        }
        let open = tcp(80, SYN);
        for len in 0..4 {
            evasive4(&ether(0x0800, &[], &ipv4(OTHER4, MF, &[], &open[..len])));
        }
        for len in 4..14 {
            let frame = ether(0x0800, &[], &ipv4(OTHER4, MF, &[], &open[..len]));
            check(&frame, RuleAction::Drop, true, Family::Ipv4, Counter::None);
        }
        let allowed = ether(0x0800, &[], &ipv4(SRC4, MF, &[], &syn[..8]));
        check(
            &allowed,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::SynAllowed,
        );
        let monitored = ether(0x0800, &[], &ipv4(OTHER4, MF, &[], &syn[..8]));
        check(
            &monitored,
            RuleAction::Monitor,
            true,
            Family::Ipv4,
            Counter::SynWouldDrop,
        );
        // F2, whatever the port and payload
        evasive4(&ether(0x0800, &[], &ipv4(OTHER4, 1, &[], &tcp(80, 0))));
        evasive4(&ether(0x0800, &[], &ipv4(OTHER4, MF | 1, &[], &[])));
        let f2_allowed = ether(0x0800, &[], &ipv4(SRC4, 1, &[], &tcp(80, 0)));
        check(
            &f2_allowed,
            RuleAction::Drop,
            true,
            Family::Ipv4,
            Counter::SynAllowed,
        );
        // later fragments
        for offset in [2, 3, 185, 0x1fff] {
            let frame = ether(0x0800, &[], &ipv4(OTHER4, MF | offset, &[], &syn));
            check(&frame, RuleAction::Drop, true, Family::Ipv4, Counter::None);
        }
    }

    #[test]
    fn ipv6_header_checks() {
        let good = v6_syn(OTHER6, 25);
        for cut in 14..good.len() {
            check(
                &good[..cut],
                RuleAction::Drop,
                true,
                Family::Ipv6,
                Counter::Malformed,
            );
        }
        let mut version = good.clone();
        version[14] = 0x40;
        check(
            &version,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::Malformed,
        );
        // P too small for the flags: malformed; P = 14 with a trailer: judged.
        let mut p13 = good.clone();
        p13[18..20].copy_from_slice(&13u16.to_be_bytes());
        check(
            &p13,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::Malformed,
        );
        let mut p14 = good.clone();
        p14[18..20].copy_from_slice(&14u16.to_be_bytes());
        check(
            &p14,
            RuleAction::Drop,
            false,
            Family::Ipv6,
            Counter::SynDropped,
        );
        let mut udp = good.clone();
        udp[20] = 17;
        check(&udp, RuleAction::Drop, true, Family::Ipv6, Counter::None);
    }

    #[test]
    fn ipv6_mapped_source_uses_the_ipv4_list() {
        let mapped_allowed = v6_syn(SRC4.to_ipv6_mapped(), 25);
        check(
            &mapped_allowed,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::SynAllowed,
        );
        let mapped_other = v6_syn(OTHER4.to_ipv6_mapped(), 25);
        check(
            &mapped_other,
            RuleAction::Drop,
            false,
            Family::Ipv6,
            Counter::SynDropped,
        );
        // ::/0 in the IPv6 list does not cover mapped sources.
        let mut everything6 = policy(RuleAction::Drop);
        everything6.allow.insert("::/0".parse().unwrap());
        assert!(!classify(&mapped_other, &everything6).pass);
        assert!(classify(&v6_syn(OTHER6, 25), &everything6).pass);
    }

    #[test]
    fn ipv6_extension_chains() {
        let syn = tcp(25, SYN);
        // each walked header type, 8 bytes long, in front of TCP
        for ext in [0u8, 43, 60] {
            let mut chain = opts8(6);
            chain.extend_from_slice(&syn);
            evasive_or_drop6(&chain, ext, false);
        }
        let mut ah = vec![6, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]; // 12 bytes
        ah.extend_from_slice(&syn);
        evasive_or_drop6(&ah, 51, false);
        let mut ah0 = vec![6, 0, 0, 0, 0, 0, 0, 1]; // payload length 0: 8 bytes
        ah0.extend_from_slice(&syn);
        evasive_or_drop6(&ah0, 51, false);
        let mut atomic = frag(6, 0, false);
        atomic.extend_from_slice(&syn);
        evasive_or_drop6(&atomic, 44, false);
        // a longer options header: (2 + 1) * 8 bytes
        let mut long = vec![6, 2];
        long.extend_from_slice(&[0; 22]);
        long.extend_from_slice(&syn);
        evasive_or_drop6(&long, 60, false);
    }

    fn evasive_or_drop6(payload: &[u8], first: u8, evasive: bool) {
        let frame = ether(0x86dd, &[], &ipv6(OTHER6, first, payload));
        let counter = if evasive {
            Counter::EvasiveDropped
        } else {
            Counter::SynDropped
        };
        check(&frame, RuleAction::Drop, false, Family::Ipv6, counter);
    }

    /// A chain of `n` 8-byte dest-opts headers, then `last` as the next header, then TCP.
    fn chain(n: usize, tcp_bytes: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for i in 0..n {
            payload.extend(opts8(if i + 1 == n { 6 } else { 60 }));
        }
        payload.extend_from_slice(tcp_bytes);
        payload
    }

    #[test]
    fn ipv6_walk_bound() {
        let syn = tcp(25, SYN);
        evasive_or_drop6(&chain(8, &syn), 60, false);
        evasive_or_drop6(&chain(9, &syn), 60, true);
        // past the bound the port does not matter
        evasive_or_drop6(&chain(9, &tcp(80, ACK)), 60, true);
        let allowed = ether(0x86dd, &[], &ipv6(SRC6, 60, &chain(12, &syn)));
        check(
            &allowed,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::SynAllowed,
        );
        // 8 headers then UDP: pass
        let mut udp = chain(8, &syn);
        udp[56] = 17;
        let frame = ether(0x86dd, &[], &ipv6(OTHER6, 60, &udp));
        check(&frame, RuleAction::Drop, true, Family::Ipv6, Counter::None);
    }

    #[test]
    fn ipv6_fragments() {
        let syn = tcp(25, SYN);
        let with = |head: Vec<u8>, tail: &[u8]| {
            let mut p = head;
            p.extend_from_slice(tail);
            p
        };
        // first fragment, whole TCP header: judged as usual
        evasive_or_drop6(&with(frag(6, 0, true), &syn), 44, false);
        // F1: first fragment too short
        evasive_or_drop6(&with(frag(6, 0, true), &syn[..13]), 44, true);
        let open = with(frag(6, 0, true), &tcp(80, SYN)[..4]);
        let frame = ether(0x86dd, &[], &ipv6(OTHER6, 44, &open));
        check(&frame, RuleAction::Drop, true, Family::Ipv6, Counter::None);
        // not a first fragment (atomic): a short TCP header is malformed
        let atomic = with(frag(6, 0, false), &syn[..13]);
        let frame = ether(0x86dd, &[], &ipv6(OTHER6, 44, &atomic));
        check(
            &frame,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::Malformed,
        );
        // F2: offset 1 with TCP next, any content
        evasive_or_drop6(&with(frag(6, 1, true), &tcp(80, ACK)), 44, true);
        let f2_udp = ether(
            0x86dd,
            &[],
            &ipv6(OTHER6, 44, &with(frag(17, 1, true), &[0; 8])),
        );
        check(&f2_udp, RuleAction::Drop, true, Family::Ipv6, Counter::None);
        // later fragments pass
        for offset in [2, 100, 0x1fff] {
            let later = ether(
                0x86dd,
                &[],
                &ipv6(OTHER6, 44, &with(frag(6, offset, true), &syn)),
            );
            check(&later, RuleAction::Drop, true, Family::Ipv6, Counter::None);
        }
        // F3: a first fragment whose chain is cut by the payload end
        let cut = with(frag(60, 0, true), &[6, 1, 0, 0]);
        evasive_or_drop6(&cut, 44, true);
        // the same cut chain without a fragment header is malformed
        let plain_cut = ether(0x86dd, &[], &ipv6(OTHER6, 60, &[6, 1, 0, 0, 0, 0, 0, 0]));
        check(
            &plain_cut,
            RuleAction::Drop,
            true,
            Family::Ipv6,
            Counter::Malformed,
        );
        // RFC 8200 puts M in byte 3 bit 0 (etherparse < 0.20 read bit 7 and would miss it).
        let f1 = ether(
            0x86dd,
            &[],
            &ipv6(OTHER6, 44, &with(frag(6, 0, true), &syn[..6])),
        );
        assert_eq!(f1[14 + 40 + 3], 0x01);
        check(
            &f1,
            RuleAction::Drop,
            false,
            Family::Ipv6,
            Counter::EvasiveDropped,
        );
    }

    #[test]
    fn short_tcp_header_fields() {
        // data offset < 5 or options cut off: etherparse refuses, the rule still judges.
        let mut syn = tcp(25, SYN);
        syn[12] = 0;
        drop4(&ether(0x0800, &[], &ipv4(OTHER4, 0, &[], &syn)));
        let mut options = tcp(25, SYN);
        options[12] = 15 << 4;
        drop4(&ether(0x0800, &[], &ipv4(OTHER4, 0, &[], &options)));
        drop4(&ether(
            0x0800,
            &[],
            &ipv4(OTHER4, 0, &[], &tcp(25, SYN)[..14]),
        ));
    }

    #[test]
    fn tally_counts_rows() {
        let frames = [v4_syn(OTHER4, 25), v6_syn(SRC6, 25), vec![0; 5]];
        let counters = tally(frames.iter().map(Vec::as_slice), &policy(RuleAction::Drop));
        assert_eq!(
            counters
                .family(Family::Ipv4)
                .get(filter_common::Counter::SynDropped),
            1
        );
        assert_eq!(
            counters
                .family(Family::Ipv6)
                .get(filter_common::Counter::SynAllowed),
            1
        );
        assert_eq!(
            counters
                .family(Family::Other)
                .get(filter_common::Counter::Malformed),
            1
        );
        assert_eq!(counters.total().get(filter_common::Counter::Frames), 3);
    }
}
