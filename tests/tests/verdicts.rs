//! Verdicts of the real XDP program through BPF_PROG_TEST_RUN: one named case per rule in
//! docs/verdict-rule.md, checking the action, the counter bumped, and that passed frames leave
//! unchanged.

use std::collections::BTreeSet;

use filter_common::{Action, Family, FamilyCounters};
use tests::{
    frames::*,
    harness::{Harness, XDP_DROP, XDP_PASS},
};

const RELAY_V4: &str = "198.51.100.7";
const SPAM_V4: &str = "203.0.113.66";
const RELAY_V6: &str = "2001:db8:1::7";
const SPAM_V6: &str = "2001:db8:bad::66";
const ALLOW: &[&str] = &["198.51.100.0/24", "2001:db8:1::/48"];

/// Which counter a frame must bump (besides `frames`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bumps {
    Nothing,
    Allowed,
    Dropped,
    WouldDrop,
    Evasive,
    Malformed,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    family: Family,
    bumps: Bumps,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, family: Family, bumps: Bumps) -> Case {
    Case {
        name,
        frame,
        action,
        family,
        bumps,
    }
}

fn pass(name: &'static str, frame: Vec<u8>, family: Family) -> Case {
    case(name, frame, XDP_PASS, family, Bumps::Nothing)
}

fn allowed(name: &'static str, frame: Vec<u8>, family: Family) -> Case {
    case(name, frame, XDP_PASS, family, Bumps::Allowed)
}

fn dropped(name: &'static str, frame: Vec<u8>, family: Family) -> Case {
    case(name, frame, XDP_DROP, family, Bumps::Dropped)
}

fn evasive(name: &'static str, frame: Vec<u8>, family: Family) -> Case {
    case(name, frame, XDP_DROP, family, Bumps::Evasive)
}

fn malformed(name: &'static str, frame: Vec<u8>, family: Family) -> Case {
    case(name, frame, XDP_PASS, family, Bumps::Malformed)
}

fn delta(before: &FamilyCounters, after: &FamilyCounters) -> (u64, Bumps, u64) {
    let changes = [
        (
            after.get(filter_common::Counter::SynAllowed)
                - before.get(filter_common::Counter::SynAllowed),
            Bumps::Allowed,
        ),
        (
            after.get(filter_common::Counter::SynDropped)
                - before.get(filter_common::Counter::SynDropped),
            Bumps::Dropped,
        ),
        (
            after.get(filter_common::Counter::SynWouldDrop)
                - before.get(filter_common::Counter::SynWouldDrop),
            Bumps::WouldDrop,
        ),
        (
            after.get(filter_common::Counter::EvasiveDropped)
                - before.get(filter_common::Counter::EvasiveDropped),
            Bumps::Evasive,
        ),
        (
            after.get(filter_common::Counter::Malformed)
                - before.get(filter_common::Counter::Malformed),
            Bumps::Malformed,
        ),
    ];
    let bumped: Vec<_> = changes.iter().filter(|(n, _)| *n > 0).collect();
    let total: u64 = bumped.iter().map(|(n, _)| n).sum();
    let which = bumped.first().map(|(_, b)| *b).unwrap_or(Bumps::Nothing);
    (
        after.get(filter_common::Counter::Frames) - before.get(filter_common::Counter::Frames),
        which,
        total,
    )
}

/// Runs every case, collecting all mismatches before failing.
fn check(harness: &Harness, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in &cases {
        let before = harness.counters(case.family);
        let run = harness.run(&case.frame);
        let after = harness.counters(case.family);
        let (frames, bumps, total) = delta(&before, &after);
        if run.action != case.action {
            failures.push(format!(
                "{}: action {} expected {}",
                case.name, run.action, case.action
            ));
        }
        if frames != 1 || bumps != case.bumps || total > 1 {
            failures.push(format!(
                "{}: counters in {:?} moved frames+{frames}, {bumps:?} (+{total} in all), expected {:?}",
                case.name, case.family, case.bumps
            ));
        }
        if run.action == XDP_PASS && run.output != case.frame {
            failures.push(format!("{}: passed frame was modified", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn syn(source: &str) -> Frame {
    Frame::syn(source, 25)
}

/// Cuts an IPv4 frame (no VLAN) to `transport` bytes after the IP header and fixes total length.
fn ipv4_total(mut bytes: Vec<u8>, total_len: u16) -> Vec<u8> {
    bytes[16..18].copy_from_slice(&total_len.to_be_bytes());
    bytes
}

/// Overwrites an IPv6 frame's (no VLAN) payload length.
fn ipv6_payload(mut bytes: Vec<u8>, payload_len: u16) -> Vec<u8> {
    bytes[18..20].copy_from_slice(&payload_len.to_be_bytes());
    bytes
}

fn truncated(bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes[..len].to_vec()
}

#[test]
fn basic_syn_verdicts() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    check(
        &harness,
        vec![
            allowed("v4 SYN from allowlisted relay", syn(RELAY_V4).bytes(), Ipv4),
            dropped("v4 SYN from other source", syn(SPAM_V4).bytes(), Ipv4),
            allowed("v6 SYN from allowlisted relay", syn(RELAY_V6).bytes(), Ipv6),
            dropped("v6 SYN from other source", syn(SPAM_V6).bytes(), Ipv6),
            allowed(
                "v4-mapped v6 source in v4 allowlist",
                syn("::ffff:198.51.100.7").bytes(),
                Ipv6,
            ),
            dropped(
                "v4-mapped v6 source not in v4 allowlist",
                syn("::ffff:203.0.113.66").bytes(),
                Ipv6,
            ),
            pass("v4 SYN to 587", Frame::syn(SPAM_V4, 587).bytes(), Ipv4),
            pass("v4 SYN to 22", Frame::syn(SPAM_V4, 22).bytes(), Ipv4),
            pass("v6 SYN to 587", Frame::syn(SPAM_V6, 587).bytes(), Ipv6),
            pass(
                "v4 SYN-ACK to 25",
                Frame::tcp(SPAM_V4, 25, SYN | ACK).bytes(),
                Ipv4,
            ),
            pass(
                "v4 SYN-ACK answering our outgoing mail",
                Frame {
                    source_port: 25,
                    ..Frame::tcp(SPAM_V4, 40_123, SYN | ACK)
                }
                .bytes(),
                Ipv4,
            ),
            pass(
                "v6 SYN-ACK answering our outgoing mail",
                Frame {
                    source_port: 25,
                    ..Frame::tcp(SPAM_V6, 40_123, SYN | ACK)
                }
                .bytes(),
                Ipv6,
            ),
            pass("v4 RST to 25", Frame::tcp(SPAM_V4, 25, RST).bytes(), Ipv4),
            pass("v4 ACK to 25", Frame::tcp(SPAM_V4, 25, ACK).bytes(), Ipv4),
            pass(
                "v4 FIN-ACK to 25",
                Frame::tcp(SPAM_V4, 25, FIN | ACK).bytes(),
                Ipv4,
            ),
            pass(
                "v6 ACK with data to 25",
                Frame::tcp(SPAM_V6, 25, ACK | PSH)
                    .payload(b"EHLO x\r\n")
                    .bytes(),
                Ipv6,
            ),
            pass(
                "v4 no flags to 25",
                Frame::tcp(SPAM_V4, 25, 0).bytes(),
                Ipv4,
            ),
            dropped("SYN+FIN", Frame::tcp(SPAM_V4, 25, SYN | FIN).bytes(), Ipv4),
            dropped("SYN+RST", Frame::tcp(SPAM_V4, 25, SYN | RST).bytes(), Ipv4),
            dropped(
                "SYN+PSH+URG",
                Frame::tcp(SPAM_V4, 25, SYN | PSH | URG).bytes(),
                Ipv4,
            ),
            dropped(
                "SYN+ECE+CWR",
                Frame::tcp(SPAM_V6, 25, SYN | ECE | CWR).bytes(),
                Ipv6,
            ),
            dropped(
                "SYN with 40 bytes of TCP options",
                syn(SPAM_V4).tcp_options(&[1; 40]).bytes(),
                Ipv4,
            ),
            dropped(
                "SYN with payload",
                syn(SPAM_V4).payload(&[0xab; 100]).bytes(),
                Ipv4,
            ),
            pass("UDP to 25", syn(SPAM_V4).protocol(17).bytes(), Ipv4),
            pass("v6 UDP to 25", syn(SPAM_V6).protocol(17).bytes(), Ipv6),
            pass(
                "ARP",
                ethernet(&[], etherparse::EtherType::ARP, &[0u8; 28]),
                Other,
            ),
        ],
    );
}

#[test]
fn vlan_shapes() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    check(
        &harness,
        vec![
            dropped("802.1Q", syn(SPAM_V4).vlan(TPID_8021Q).bytes(), Ipv4),
            allowed("802.1Q relay", syn(RELAY_V4).vlan(TPID_8021Q).bytes(), Ipv4),
            dropped("802.1ad", syn(SPAM_V4).vlan(TPID_8021AD).bytes(), Ipv4),
            dropped(
                "QinQ 88a8+8100",
                syn(SPAM_V4).vlan(TPID_8021AD).vlan(TPID_8021Q).bytes(),
                Ipv4,
            ),
            dropped(
                "QinQ 8100+8100",
                syn(SPAM_V6).vlan(TPID_8021Q).vlan(TPID_8021Q).bytes(),
                Ipv6,
            ),
            dropped(
                "QinQ 8100+88a8",
                syn(SPAM_V6).vlan(TPID_8021Q).vlan(TPID_8021AD).bytes(),
                Ipv6,
            ),
            allowed(
                "QinQ relay v6",
                syn(RELAY_V6).vlan(TPID_8021AD).vlan(TPID_8021Q).bytes(),
                Ipv6,
            ),
            pass(
                "three tags pass",
                syn(SPAM_V4)
                    .vlan(TPID_8021Q)
                    .vlan(TPID_8021Q)
                    .vlan(TPID_8021Q)
                    .bytes(),
                Other,
            ),
            malformed(
                "tag cut short",
                truncated(syn(SPAM_V4).vlan(TPID_8021Q).bytes(), 16),
                Other,
            ),
            malformed(
                "second tag cut short",
                truncated(syn(SPAM_V4).vlan(TPID_8021AD).vlan(TPID_8021Q).bytes(), 20),
                Other,
            ),
        ],
    );
}

#[test]
fn ipv4_options_and_header_errors() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    let mut bad_version = syn(SPAM_V4).bytes();
    bad_version[14] = 0x65;
    let mut short_ihl = syn(SPAM_V4).bytes();
    short_ihl[14] = 0x44;
    check(
        &harness,
        vec![
            dropped(
                "4 bytes of IPv4 options",
                syn(SPAM_V4).ipv4_options(&[1, 1, 1, 0]).bytes(),
                Ipv4,
            ),
            dropped(
                "40 bytes of IPv4 options (IHL 15)",
                syn(SPAM_V4).ipv4_options(&[1; 40]).bytes(),
                Ipv4,
            ),
            allowed(
                "options, relay",
                syn(RELAY_V4).ipv4_options(&[1; 20]).bytes(),
                Ipv4,
            ),
            pass(
                "options, port 587",
                Frame::syn(SPAM_V4, 587).ipv4_options(&[1; 40]).bytes(),
                Ipv4,
            ),
            malformed("version 6 in an IPv4 ethertype", bad_version, Ipv4),
            malformed("IHL 4", short_ihl, Ipv4),
            malformed(
                "total length below header length",
                ipv4_total(syn(SPAM_V4).bytes(), 19),
                Ipv4,
            ),
            malformed(
                "total length beyond the frame",
                ipv4_total(syn(SPAM_V4).bytes(), 41),
                Ipv4,
            ),
            malformed(
                "segment shorter than a TCP header",
                ipv4_total(syn(SPAM_V4).bytes(), 20 + 13),
                Ipv4,
            ),
            dropped(
                "trailing padding past total length is ignored",
                [syn(SPAM_V4).bytes(), vec![0u8; 18]].concat(),
                Ipv4,
            ),
        ],
    );
}

#[test]
fn ipv6_extension_chains() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    let chain = |source: &str, count: usize| {
        (0..count).fold(syn(source), |frame, i| {
            frame.ext(if i % 2 == 0 {
                Ext::DestOpts { units: 0 }
            } else {
                Ext::Routing { units: 1 }
            })
        })
    };
    check(
        &harness,
        vec![
            dropped(
                "hop-by-hop",
                syn(SPAM_V6).ext(Ext::HopByHop { units: 0 }).bytes(),
                Ipv6,
            ),
            dropped(
                "hop-by-hop, routing, destination options",
                syn(SPAM_V6)
                    .ext(Ext::HopByHop { units: 2 })
                    .ext(Ext::Routing { units: 2 })
                    .ext(Ext::DestOpts { units: 255 })
                    .bytes(),
                Ipv6,
            ),
            dropped(
                "authentication header",
                syn(SPAM_V6).ext(Ext::Ah { words: 3 }).bytes(),
                Ipv6,
            ),
            allowed(
                "AH from relay",
                syn(RELAY_V6).ext(Ext::Ah { words: 0 }).bytes(),
                Ipv6,
            ),
            dropped(
                "atomic fragment",
                syn(SPAM_V6)
                    .ext(Ext::Fragment {
                        offset: 0,
                        more: false,
                    })
                    .bytes(),
                Ipv6,
            ),
            dropped(
                "8 headers: at the walk bound",
                chain(SPAM_V6, 8).bytes(),
                Ipv6,
            ),
            evasive(
                "9 headers: past the walk bound",
                chain(SPAM_V6, 9).bytes(),
                Ipv6,
            ),
            evasive(
                "9 headers to port 22: past the bound, any port",
                {
                    let frame = chain(SPAM_V6, 9);
                    Frame {
                        destination_port: 22,
                        ..frame
                    }
                    .bytes()
                },
                Ipv6,
            ),
            allowed("9 headers from relay", chain(RELAY_V6, 9).bytes(), Ipv6),
            pass(
                "hop-by-hop then UDP",
                syn(SPAM_V6)
                    .ext(Ext::HopByHop { units: 0 })
                    .protocol(17)
                    .bytes(),
                Ipv6,
            ),
            pass("ESP", syn(SPAM_V6).protocol(50).bytes(), Ipv6),
            malformed(
                "extension header longer than the payload",
                ipv6_payload(
                    syn(SPAM_V6)
                        .ext(Ext::DestOpts { units: 1 })
                        .transport_len(0)
                        .bytes(),
                    8,
                ),
                Ipv6,
            ),
            malformed(
                "payload length beyond the frame",
                ipv6_payload(syn(SPAM_V6).bytes(), 21),
                Ipv6,
            ),
            malformed(
                "payload shorter than a TCP header",
                ipv6_payload(syn(SPAM_V6).bytes(), 13),
                Ipv6,
            ),
        ],
    );
}

#[test]
fn fragments() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    let v6_first = || {
        syn(SPAM_V6).ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
    };
    check(
        &harness,
        vec![
            dropped(
                "v4 first fragment with whole TCP header",
                syn(SPAM_V4).ipv4_fragment(0, true).bytes(),
                Ipv4,
            ),
            pass(
                "v4 later fragment",
                syn(SPAM_V4).ipv4_fragment(100, false).bytes(),
                Ipv4,
            ),
            pass(
                "v4 later fragment, more to come",
                syn(SPAM_V4).ipv4_fragment(2, true).bytes(),
                Ipv4,
            ),
            evasive(
                "v4 fragment offset 1",
                syn(SPAM_V4).ipv4_fragment(1, true).bytes(),
                Ipv4,
            ),
            evasive(
                "v4 fragment offset 1 to port 22",
                Frame::syn(SPAM_V4, 22).ipv4_fragment(1, false).bytes(),
                Ipv4,
            ),
            allowed(
                "v4 fragment offset 1 from relay",
                syn(RELAY_V4).ipv4_fragment(1, false).bytes(),
                Ipv4,
            ),
            evasive(
                "v4 tiny first fragment (8 TCP bytes) to 25",
                syn(SPAM_V4).ipv4_fragment(0, true).transport_len(8).bytes(),
                Ipv4,
            ),
            evasive(
                "v4 tiny first fragment (13 TCP bytes) to 25",
                syn(SPAM_V4)
                    .ipv4_fragment(0, true)
                    .transport_len(13)
                    .bytes(),
                Ipv4,
            ),
            evasive(
                "v4 tiny first fragment, port unreadable",
                Frame::syn(SPAM_V4, 22)
                    .ipv4_fragment(0, true)
                    .transport_len(3)
                    .bytes(),
                Ipv4,
            ),
            pass(
                "v4 tiny first fragment to an unprotected port",
                Frame::syn(SPAM_V4, 22)
                    .ipv4_fragment(0, true)
                    .transport_len(8)
                    .bytes(),
                Ipv4,
            ),
            allowed(
                "v4 tiny first fragment from relay",
                syn(RELAY_V4)
                    .ipv4_fragment(0, true)
                    .transport_len(8)
                    .bytes(),
                Ipv4,
            ),
            evasive(
                "v4 tiny first fragment hiding behind padding",
                [
                    Frame::tcp(SPAM_V4, 25, ACK)
                        .ipv4_fragment(0, true)
                        .transport_len(8)
                        .bytes(),
                    {
                        // Bytes past the total length that read as a full ACK segment.
                        Frame::tcp(SPAM_V4, 25, ACK).bytes()[34 + 8..].to_vec()
                    },
                ]
                .concat(),
                Ipv4,
            ),
            dropped(
                "v6 first fragment with whole TCP header",
                v6_first().bytes(),
                Ipv6,
            ),
            pass(
                "v6 later fragment",
                syn(SPAM_V6)
                    .ext(Ext::Fragment {
                        offset: 100,
                        more: false,
                    })
                    .bytes(),
                Ipv6,
            ),
            evasive(
                "v6 fragment offset 1",
                syn(SPAM_V6)
                    .ext(Ext::Fragment {
                        offset: 1,
                        more: true,
                    })
                    .bytes(),
                Ipv6,
            ),
            pass(
                "v6 fragment offset 1, not TCP",
                syn(SPAM_V6)
                    .ext(Ext::Fragment {
                        offset: 1,
                        more: true,
                    })
                    .protocol(17)
                    .bytes(),
                Ipv6,
            ),
            evasive(
                "v6 tiny first fragment",
                v6_first().transport_len(8).bytes(),
                Ipv6,
            ),
            pass(
                "v6 tiny first fragment to an unprotected port",
                Frame {
                    destination_port: 22,
                    ..v6_first().transport_len(8)
                }
                .bytes(),
                Ipv6,
            ),
            evasive(
                "v6 first fragment whose chain ends early",
                ipv6_payload(
                    v6_first()
                        .ext(Ext::DestOpts { units: 1 })
                        .transport_len(0)
                        .bytes(),
                    16,
                ),
                Ipv6,
            ),
            allowed(
                "v6 tiny first fragment from relay",
                {
                    syn(RELAY_V6)
                        .ext(Ext::Fragment {
                            offset: 0,
                            more: true,
                        })
                        .transport_len(8)
                        .bytes()
                },
                Ipv6,
            ),
        ],
    );
}

#[test]
fn truncation_at_each_header_boundary() {
    use Family::*;
    let harness = Harness::new(&[25], ALLOW);
    let v4 = syn(SPAM_V4).bytes();
    let v6 = syn(SPAM_V6).bytes();
    check(
        &harness,
        vec![
            // BPF_PROG_TEST_RUN refuses frames under 14 bytes (EINVAL), so the shortest
            // testable frame is a bare Ethernet header.
            malformed(
                "Ethernet header only (IPv4 type)",
                truncated(v4.clone(), 14),
                Ipv4,
            ),
            malformed("IPv4 header cut in half", truncated(v4.clone(), 24), Ipv4),
            malformed("IPv4 header, no TCP", truncated(v4.clone(), 34), Ipv4),
            malformed("IPv4, TCP ports only", truncated(v4.clone(), 38), Ipv4),
            malformed("IPv4, TCP up to the flags", truncated(v4.clone(), 47), Ipv4),
            malformed(
                "IPv4, TCP cut after the flags",
                truncated(v4.clone(), 48),
                Ipv4,
            ),
            malformed(
                "Ethernet header only (IPv6 type)",
                truncated(v6.clone(), 14),
                Ipv6,
            ),
            malformed("IPv6 header cut in half", truncated(v6.clone(), 34), Ipv6),
            malformed("IPv6 header, no TCP", truncated(v6.clone(), 54), Ipv6),
            malformed("IPv6, TCP up to the flags", truncated(v6.clone(), 67), Ipv6),
        ],
    );
}

#[test]
fn port_set_changes_at_run_time() {
    let mut harness = Harness::new(&[25], ALLOW);
    let to_25 = syn(SPAM_V4).bytes();
    let to_2525 = Frame::syn(SPAM_V4, 2525).bytes();
    assert_eq!(harness.run(&to_25).action, XDP_DROP);
    assert_eq!(harness.run(&to_2525).action, XDP_PASS);

    let old = BTreeSet::from([25]);
    let new = BTreeSet::from([2525, 65535, 1]);
    harness.filter.set_ports(&new, &old).unwrap();
    assert_eq!(harness.filter.ports().unwrap(), new);
    assert_eq!(harness.run(&to_25).action, XDP_PASS, "25 released");
    assert_eq!(harness.run(&to_2525).action, XDP_DROP, "2525 protected");
    assert_eq!(
        harness.run(&Frame::syn(SPAM_V6, 65535).bytes()).action,
        XDP_DROP
    );
    assert_eq!(
        harness.run(&Frame::syn(SPAM_V6, 1).bytes()).action,
        XDP_DROP
    );
    assert_eq!(
        harness.run(&Frame::syn(RELAY_V6, 1).bytes()).action,
        XDP_PASS
    );

    harness.filter.set_ports(&BTreeSet::new(), &new).unwrap();
    assert_eq!(harness.run(&to_2525).action, XDP_PASS, "no ports protected");
}

#[test]
fn monitor_action_passes_and_counts_would_be_drops() {
    let mut harness = Harness::new(&[25], ALLOW);
    harness.set_action(Action::Monitor);
    check(
        &harness,
        vec![
            case(
                "SYN from other source",
                syn(SPAM_V4).bytes(),
                XDP_PASS,
                Family::Ipv4,
                Bumps::WouldDrop,
            ),
            case(
                "tiny fragment",
                syn(SPAM_V6)
                    .ext(Ext::Fragment {
                        offset: 1,
                        more: true,
                    })
                    .bytes(),
                XDP_PASS,
                Family::Ipv6,
                Bumps::WouldDrop,
            ),
            allowed("relay", syn(RELAY_V4).bytes(), Family::Ipv4),
        ],
    );
    harness.set_action(Action::Drop);
    assert_eq!(harness.run(&syn(SPAM_V4).bytes()).action, XDP_DROP);
}

#[test]
fn allowlist_updates_take_effect_immediately() {
    let mut harness = Harness::new(&[25], &[]);
    let frame = syn(SPAM_V4).bytes();
    assert_eq!(
        harness.run(&frame).action,
        XDP_DROP,
        "empty allowlist drops"
    );
    let wanted = BTreeSet::from([
        "203.0.113.0/24".parse().unwrap(),
        "2001:db8:bad::/48".parse().unwrap(),
    ]);
    let change = harness.filter.sync_allowlist(&wanted).unwrap();
    assert_eq!(change.added.len(), 2);
    assert_eq!(harness.filter.allowlist().unwrap(), wanted);
    assert_eq!(harness.run(&frame).action, XDP_PASS);
    assert_eq!(harness.run(&syn(SPAM_V6).bytes()).action, XDP_PASS);
    let change = harness.filter.sync_allowlist(&BTreeSet::new()).unwrap();
    assert_eq!(change.removed.len(), 2);
    assert_eq!(harness.run(&frame).action, XDP_DROP);
}

const XDP_TX: u32 = 3;

/// Checks that `output` is a RST+ACK answering the SYN `input`, with correct checksums.
fn assert_valid_rst(name: &str, input: &[u8], output: &[u8]) {
    use etherparse::{LinkHeader, NetHeaders, PacketHeaders, TransportHeader};
    let syn = PacketHeaders::from_ethernet_slice(input).expect("input parses");
    let rst = PacketHeaders::from_ethernet_slice(output)
        .unwrap_or_else(|e| panic!("{name}: RST does not parse: {e}"));
    let (Some(LinkHeader::Ethernet2(syn_eth)), Some(LinkHeader::Ethernet2(rst_eth))) =
        (&syn.link, &rst.link)
    else {
        panic!("{name}: no Ethernet header");
    };
    assert_eq!(
        (rst_eth.source, rst_eth.destination),
        (syn_eth.destination, syn_eth.source),
        "{name}: MACs swapped"
    );
    assert_eq!(
        rst.link_exts.len(),
        syn.link_exts.len(),
        "{name}: VLAN tags kept"
    );
    let (Some(TransportHeader::Tcp(syn_tcp)), Some(TransportHeader::Tcp(rst_tcp))) =
        (&syn.transport, &rst.transport)
    else {
        panic!("{name}: no TCP header");
    };
    assert!(
        rst_tcp.rst && rst_tcp.ack && !rst_tcp.syn,
        "{name}: RST+ACK flags"
    );
    assert_eq!(
        (rst_tcp.source_port, rst_tcp.destination_port),
        (syn_tcp.destination_port, syn_tcp.source_port)
    );
    assert_eq!(rst_tcp.sequence_number, 0, "{name}: seq");
    let expected_ack = syn_tcp
        .sequence_number
        .wrapping_add(1 + u32::from(syn_tcp.fin) + syn.payload.slice().len() as u32);
    assert_eq!(
        rst_tcp.acknowledgment_number, expected_ack,
        "{name}: ack covers SYN, FIN and data"
    );
    assert!(
        rst.payload.slice().is_empty(),
        "{name}: RST carries no data"
    );
    match (&syn.net, &rst.net) {
        (Some(NetHeaders::Ipv4(syn_ip, _)), Some(NetHeaders::Ipv4(rst_ip, _))) => {
            assert_eq!(
                (rst_ip.source, rst_ip.destination),
                (syn_ip.destination, syn_ip.source),
                "{name}"
            );
            assert_eq!(
                rst_ip.header_checksum,
                rst_ip.calc_header_checksum(),
                "{name}: IPv4 checksum"
            );
            assert_eq!(
                rst_tcp.checksum,
                rst_tcp.calc_checksum_ipv4(rst_ip, &[]).unwrap(),
                "{name}: TCP checksum"
            );
            assert_eq!(
                output.len(),
                input.len()
                    - syn_ip.header_len()
                    - syn_tcp.header_len()
                    - syn.payload.slice().len()
                    + 40
            );
        }
        (Some(NetHeaders::Ipv6(syn_ip, _)), Some(NetHeaders::Ipv6(rst_ip, rst_ext))) => {
            assert_eq!(
                (rst_ip.source, rst_ip.destination),
                (syn_ip.destination, syn_ip.source),
                "{name}"
            );
            assert!(
                rst_ext.is_empty(),
                "{name}: no extension headers in the RST"
            );
            assert_eq!(rst_ip.payload_length, 20);
            assert_eq!(
                rst_tcp.checksum,
                rst_tcp.calc_checksum_ipv6(rst_ip, &[]).unwrap(),
                "{name}: TCP checksum"
            );
        }
        _ => panic!("{name}: address family changed"),
    }
}

#[test]
fn reject_action_answers_with_a_valid_rst() {
    let mut harness = Harness::new(&[25], ALLOW);
    harness.set_action(Action::Reject);
    let cases = [
        ("v4 SYN", syn(SPAM_V4).bytes()),
        ("v6 SYN", syn(SPAM_V6).bytes()),
        (
            "v4 SYN+FIN with data",
            Frame::tcp(SPAM_V4, 25, SYN | FIN).payload(b"HELO").bytes(),
        ),
        (
            "v4 SYN, options, QinQ",
            syn(SPAM_V4)
                .ipv4_options(&[1; 8])
                .tcp_options(&[1; 20])
                .vlan(TPID_8021AD)
                .vlan(TPID_8021Q)
                .bytes(),
        ),
        (
            "v6 SYN behind extension headers",
            syn(SPAM_V6)
                .ext(Ext::HopByHop { units: 1 })
                .ext(Ext::DestOpts { units: 0 })
                .bytes(),
        ),
    ];
    for (name, frame) in &cases {
        let before = harness
            .counters(Family::Ipv4)
            .get(filter_common::Counter::SynRejected)
            + harness
                .counters(Family::Ipv6)
                .get(filter_common::Counter::SynRejected);
        let run = harness.run(frame);
        assert_eq!(run.action, XDP_TX, "{name}");
        assert_valid_rst(name, frame, &run.output);
        let after = harness
            .counters(Family::Ipv4)
            .get(filter_common::Counter::SynRejected)
            + harness
                .counters(Family::Ipv6)
                .get(filter_common::Counter::SynRejected);
        assert_eq!(after, before + 1, "{name}: syn_rejected counted");
    }
    // Allowed, unprotected and evasive frames are not answered.
    assert_eq!(harness.run(&syn(RELAY_V4).bytes()).action, XDP_PASS);
    assert_eq!(
        harness.run(&Frame::syn(SPAM_V4, 587).bytes()).action,
        XDP_PASS
    );
    assert_eq!(
        harness
            .run(&syn(SPAM_V4).ipv4_fragment(1, true).bytes())
            .action,
        XDP_DROP
    );
    assert_eq!(
        harness
            .run(&syn(SPAM_V4).ipv4_fragment(0, true).transport_len(8).bytes())
            .action,
        XDP_DROP
    );
}

#[test]
fn reject_is_rate_limited_per_cpu() {
    // One CPU, so every run meets the same per-CPU window.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).expect("pinning to CPU 0");
    let mut harness = Harness::new(&[25], ALLOW);
    harness.set_action(Action::Reject);
    harness.filter.set_reject_rate(3).unwrap();
    let frame = syn(SPAM_V4).bytes();
    let actions: Vec<u32> = (0..5).map(|_| harness.run(&frame).action).collect();
    assert_eq!(actions, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
    let row = harness.counters(Family::Ipv4);
    assert_eq!(
        (
            row.get(filter_common::Counter::SynRejected),
            row.get(filter_common::Counter::SynDropped)
        ),
        (3, 2)
    );
}
