//! One test per known way to sneak a SYN past a port filter. Each frame's verdict is written
//! out by hand from docs/verdict-rule.md and checked against BOTH the reference classifier and
//! the real XDP program (BPF_PROG_TEST_RUN: return value, counter change, unchanged bytes).
//!
//! Frames printed by a failing differential run (`from_hex("...")`) belong at the end, in
//! `found_by_the_differential_test`.

use filter_common::{Counter, Family};
use test_kit::{
    differential::{Differential, from_hex},
    frames::*,
};
use verdict_reference::{self as reference, Policy, Prefix, RuleAction, Verdict};

const RELAY_V4: &str = "198.51.100.7";
const SPAM_V4: &str = "203.0.113.66";
const RELAY_V6: &str = "2001:db8:1::7";
const SPAM_V6: &str = "2001:db8:bad::66";
const ALLOW: &[&str] = &["198.51.100.7/32", "2001:db8:1::/48"];

/// The verdicts a frame can get, named as in the rule.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// PASS, no counter.
    Pass,
    /// PASS, syn_allowed.
    Allowed,
    /// DROP, syn_dropped.
    Dropped,
    /// DROP, evasive_dropped (F1 to F3).
    Evasive,
    /// PASS, syn_would_drop (monitor).
    WouldDrop,
    /// PASS, malformed.
    Malformed,
}

impl Expect {
    fn verdict(self, family: Family) -> Verdict {
        let (pass, counter) = match self {
            Expect::Pass => (true, None),
            Expect::Allowed => (true, Some(Counter::SynAllowed)),
            Expect::Dropped => (false, Some(Counter::SynDropped)),
            Expect::Evasive => (false, Some(Counter::EvasiveDropped)),
            Expect::WouldDrop => (true, Some(Counter::SynWouldDrop)),
            Expect::Malformed => (true, Some(Counter::Malformed)),
        };
        Verdict {
            pass,
            family,
            counter,
        }
    }
}

/// A program loaded for one test (tests run in parallel: each has its own maps).
struct Check {
    differential: Differential,
}

impl Check {
    fn new(allow: &[&str]) -> Check {
        Check::with(allow, RuleAction::Drop)
    }

    fn with(allow: &[&str], action: RuleAction) -> Check {
        let policy = Policy {
            ports: [25].into(),
            allow: allow
                .iter()
                .map(|c| c.parse().expect("test CIDR"))
                .collect(),
            action,
        };
        Check::policy(policy)
    }

    fn policy(policy: Policy) -> Check {
        Check {
            differential: Differential::new(policy).expect("loading the XDP program"),
        }
    }

    /// Asserts the reference gives `expect` and the program agrees with the reference.
    #[track_caller]
    fn expect(&mut self, what: &str, frame: &[u8], family: Family, expect: Expect) {
        let want = expect.verdict(family);
        let reference = reference::classify(frame, self.differential.policy());
        assert_eq!(reference, want, "{what}: reference verdict");
        if let Err(reason) = self.differential.check(frame, true) {
            panic!("{what}: program: {reason}");
        }
    }
}

fn syn(source: &str) -> Frame {
    Frame::syn(source, 25)
}

/// Sets the IPv4 total length of a frame without VLAN tags.
fn ipv4_total_len(mut bytes: Vec<u8>, total_len: u16) -> Vec<u8> {
    bytes[16..18].copy_from_slice(&total_len.to_be_bytes());
    bytes
}

/// Sets the IPv6 payload length of a frame without VLAN tags.
fn ipv6_payload_len(mut bytes: Vec<u8>, payload_len: u16) -> Vec<u8> {
    bytes[18..20].copy_from_slice(&payload_len.to_be_bytes());
    bytes
}

#[test]
fn vlan_and_qinq() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    for (name, tags) in [
        ("802.1Q", vec![TPID_8021Q]),
        ("802.1ad", vec![TPID_8021AD]),
        ("QinQ 88a8+8100", vec![TPID_8021AD, TPID_8021Q]),
        ("QinQ 8100+88a8", vec![TPID_8021Q, TPID_8021AD]),
        ("QinQ 8100+8100", vec![TPID_8021Q, TPID_8021Q]),
        ("QinQ 88a8+88a8", vec![TPID_8021AD, TPID_8021AD]),
    ] {
        let tagged = |mut frame: Frame| {
            frame.vlans = tags.clone();
            frame.bytes()
        };
        check.expect(name, &tagged(syn(SPAM_V4)), Ipv4, Dropped);
        check.expect(name, &tagged(syn(SPAM_V6)), Ipv6, Dropped);
        check.expect(name, &tagged(syn(RELAY_V4)), Ipv4, Allowed);
        check.expect(name, &tagged(syn(RELAY_V6)), Ipv6, Allowed);
    }
    let three = syn(SPAM_V4)
        .vlan(TPID_8021AD)
        .vlan(TPID_8021Q)
        .vlan(TPID_8021Q)
        .bytes();
    check.expect("a third tag passes (Decisions)", &three, Other, Pass);
    let qinq = syn(SPAM_V4).vlan(TPID_8021AD).vlan(TPID_8021Q).bytes();
    check.expect("second tag cut short", &qinq[..20], Other, Malformed);
    check.expect("IPv4 header cut after QinQ", &qinq[..30], Ipv4, Malformed);
    // 0x9100 (old QinQ) is not a tag for the rule: the frame is "other".
    let old_qinq = syn(SPAM_V4).vlan(0x9100).bytes();
    check.expect("0x9100 is not a tag", &old_qinq, Other, Pass);
}

#[test]
fn ipv6_extension_headers_before_tcp() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    let headers = [
        ("hop-by-hop", Ext::HopByHop { units: 0 }),
        ("long hop-by-hop", Ext::HopByHop { units: 3 }),
        ("routing", Ext::Routing { units: 0 }),
        ("destination options", Ext::DestOpts { units: 1 }),
        ("authentication header", Ext::Ah { words: 0 }),
        ("long authentication header", Ext::Ah { words: 5 }),
        (
            "atomic fragment",
            Ext::Fragment {
                offset: 0,
                more: false,
            },
        ),
    ];
    for (name, ext) in &headers {
        check.expect(name, &syn(SPAM_V6).ext(ext.clone()).bytes(), Ipv6, Dropped);
        check.expect(name, &syn(RELAY_V6).ext(ext.clone()).bytes(), Ipv6, Allowed);
    }
    // Authentication header with payload length 0: 8 bytes by the rule's formula.
    let mut ah0 = syn(SPAM_V6).bytes();
    ah0[20] = 51;
    ah0.splice(54..54, [6, 0, 0, 0, 0, 0, 0, 1]);
    let ah0 = ipv6_payload_len(ah0, 28);
    check.expect("AH with payload length 0", &ah0, Ipv6, Dropped);

    let chain = |n: usize, frame: Frame| {
        let mut frame = frame;
        for index in 0..n {
            let (_, ext) = &headers[index % headers.len()];
            frame = frame.ext(ext.clone());
        }
        frame.bytes()
    };
    check.expect(
        "8 headers: the walk bound",
        &chain(8, syn(SPAM_V6)),
        Ipv6,
        Dropped,
    );
    check.expect("9 headers: F3", &chain(9, syn(SPAM_V6)), Ipv6, Evasive);
    let ack_80 = Frame::tcp(SPAM_V6, 80, ACK);
    check.expect("F3 whatever the port", &chain(12, ack_80), Ipv6, Evasive);
    check.expect("F3, allowlisted", &chain(9, syn(RELAY_V6)), Ipv6, Allowed);
    let udp = syn(SPAM_V6).protocol(17);
    check.expect("8 headers then UDP", &chain(8, udp), Ipv6, Pass);
    let esp = syn(SPAM_V6).ext(Ext::DestOpts { units: 0 }).protocol(50);
    check.expect("ESP passes (Decisions)", &esp.bytes(), Ipv6, Pass);
    // A chain cut by the payload length outside a first fragment: the kernel drops it.
    let cut = ipv6_payload_len(syn(SPAM_V6).ext(Ext::DestOpts { units: 2 }).bytes(), 16);
    check.expect("chain cut short", &cut, Ipv6, Malformed);
}

#[test]
fn ipv4_options() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    for words in 0..=10usize {
        // NOPs, and a router-alert option at the front when there is room.
        let mut options = vec![1u8; words * 4];
        if words > 0 {
            options[..4].copy_from_slice(&[0x94, 0x04, 0, 0]);
        }
        let name = format!("IHL {}", 5 + words);
        let spam = syn(SPAM_V4).ipv4_options(&options).bytes();
        check.expect(&name, &spam, Ipv4, Dropped);
        let relay = syn(RELAY_V4).ipv4_options(&options).bytes();
        check.expect(&name, &relay, Ipv4, Allowed);
    }
    let mut ihl4 = syn(SPAM_V4).bytes();
    ihl4[14] = 0x44;
    check.expect("IHL 4", &ihl4, Ipv4, Malformed);
    // IHL 15 claims 60 bytes of header that the total length does not hold.
    let mut ihl15 = syn(SPAM_V4).bytes();
    ihl15[14] = 0x4f;
    check.expect("IHL past total length", &ihl15, Ipv4, Malformed);
}

#[test]
fn tiny_first_fragment_rfc1858() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    for len in 0..14 {
        let v4 = syn(SPAM_V4).ipv4_fragment(0, true).transport_len(len);
        check.expect(&format!("v4 {len} TCP bytes"), &v4.bytes(), Ipv4, Evasive);
        let first = Ext::Fragment {
            offset: 0,
            more: true,
        };
        let v6 = syn(SPAM_V6).ext(first).transport_len(len);
        check.expect(&format!("v6 {len} TCP bytes"), &v6.bytes(), Ipv6, Evasive);
        let relay = syn(RELAY_V4).ipv4_fragment(0, true).transport_len(len);
        check.expect(&format!("relay {len} bytes"), &relay.bytes(), Ipv4, Allowed);
        // With the port readable and not protected, F1 lets it pass.
        let open = Frame::syn(SPAM_V4, 80)
            .ipv4_fragment(0, true)
            .transport_len(len);
        let expect = if len >= 4 { Pass } else { Evasive };
        check.expect(
            &format!("port 80, {len} bytes"),
            &open.bytes(),
            Ipv4,
            expect,
        );
    }
    // A first fragment with the flags in it is judged like a whole packet.
    let whole_header = syn(SPAM_V4).ipv4_fragment(0, true).transport_len(14);
    check.expect("14 bytes: a SYN", &whole_header.bytes(), Ipv4, Dropped);
    let ack = Frame::tcp(SPAM_V4, 25, ACK)
        .ipv4_fragment(0, true)
        .transport_len(14);
    check.expect("14 bytes: an ACK", &ack.bytes(), Ipv4, Pass);
    // The same cut in a whole packet is malformed: the kernel drops a short segment.
    let short = syn(SPAM_V4).transport_len(13);
    check.expect("13 bytes, not a fragment", &short.bytes(), Ipv4, Malformed);
    // A total length that hides the flags behind the IP packet's end.
    let hidden = ipv4_total_len(syn(SPAM_V4).ipv4_fragment(0, true).bytes(), 20 + 13);
    check.expect("T cuts the header", &hidden, Ipv4, Evasive);
    let mut policy_monitor = Check::with(ALLOW, RuleAction::Monitor);
    let tiny = syn(SPAM_V4).ipv4_fragment(0, true).transport_len(8);
    policy_monitor.expect("monitor", &tiny.bytes(), Ipv4, WouldDrop);
}

#[test]
fn fragment_offset_one_and_overlaps() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    // F2: offset 1 can only rewrite the first fragment's TCP flags; dropped whatever it holds.
    for (name, frame) in [
        ("SYN to 25", syn(SPAM_V4)),
        ("ACK to 80", Frame::tcp(SPAM_V4, 80, ACK)),
        ("no TCP bytes", syn(SPAM_V4).transport_len(0)),
    ] {
        let v4 = frame.clone().ipv4_fragment(1, true).bytes();
        check.expect(&format!("v4 offset 1, {name}"), &v4, Ipv4, Evasive);
        let last = frame.ipv4_fragment(1, false).bytes();
        check.expect(&format!("v4 offset 1 last, {name}"), &last, Ipv4, Evasive);
    }
    let relay = syn(RELAY_V4).ipv4_fragment(1, true).bytes();
    check.expect("v4 offset 1 from a relay", &relay, Ipv4, Allowed);
    let udp = syn(SPAM_V4).protocol(17).ipv4_fragment(1, true).bytes();
    check.expect("v4 offset 1, UDP", &udp, Ipv4, Pass);
    let offset_one = Ext::Fragment {
        offset: 1,
        more: true,
    };
    let v6 = Frame::tcp(SPAM_V6, 80, ACK).ext(offset_one.clone()).bytes();
    check.expect("v6 offset 1 before TCP", &v6, Ipv6, Evasive);
    let v6_udp = syn(SPAM_V6).ext(offset_one.clone()).protocol(17).bytes();
    check.expect("v6 offset 1 before UDP", &v6_udp, Ipv6, Pass);
    let v6_relay = syn(RELAY_V6).ext(offset_one).bytes();
    check.expect("v6 offset 1 from a relay", &v6_relay, Ipv6, Allowed);
    // Later (and overlapping) offsets carry no TCP header; Linux discards overlaps.
    for offset in [2, 3, 185, 0x1fff] {
        let later = syn(SPAM_V4).ipv4_fragment(offset, true).bytes();
        check.expect(&format!("v4 offset {offset}"), &later, Ipv4, Pass);
        let ext = Ext::Fragment {
            offset,
            more: false,
        };
        let later6 = syn(SPAM_V6).ext(ext).bytes();
        check.expect(&format!("v6 offset {offset}"), &later6, Ipv6, Pass);
    }
}

#[test]
fn syn_with_fin_rst_psh_urg() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    for (name, flags) in [
        ("SYN+FIN", SYN | FIN),
        ("SYN+RST", SYN | RST),
        ("SYN+PSH", SYN | PSH),
        ("SYN+URG", SYN | URG),
        ("SYN+FIN+RST+PSH+URG", SYN | FIN | RST | PSH | URG),
    ] {
        let v4 = Frame::tcp(SPAM_V4, 25, flags).bytes();
        check.expect(name, &v4, Ipv4, Dropped);
        let v6 = Frame::tcp(SPAM_V6, 25, flags).payload(b"data").bytes();
        check.expect(name, &v6, Ipv6, Dropped);
    }
    // Every combination: exactly "SYN set, ACK clear" is a SYN.
    for flags in 0..=255u8 {
        let expect = if flags & SYN != 0 && flags & ACK == 0 {
            Dropped
        } else {
            Pass
        };
        let frame = Frame::tcp(SPAM_V4, 25, flags).bytes();
        check.expect(&format!("flags {flags:#04x}"), &frame, Ipv4, expect);
    }
}

#[test]
fn syn_with_ece_cwr_is_still_a_syn() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    for (name, flags) in [
        ("SYN+ECE+CWR (RFC 3168 ECN setup)", SYN | ECE | CWR),
        ("SYN+ECE", SYN | ECE),
        ("SYN+CWR", SYN | CWR),
    ] {
        check.expect(name, &Frame::tcp(SPAM_V4, 25, flags).bytes(), Ipv4, Dropped);
        check.expect(name, &Frame::tcp(SPAM_V6, 25, flags).bytes(), Ipv6, Dropped);
        check.expect(
            name,
            &Frame::tcp(RELAY_V6, 25, flags).bytes(),
            Ipv6,
            Allowed,
        );
    }
    let syn_ack_ece = Frame::tcp(SPAM_V4, 25, SYN | ACK | ECE).bytes();
    check.expect("SYN+ACK+ECE is an answer", &syn_ack_ece, Ipv4, Pass);
}

#[test]
fn zero_and_maximal_tcp_options() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    let mut maximal = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10]; // MSS, SACK-permitted, timestamps
    maximal.extend_from_slice(&[0; 8]);
    maximal.extend_from_slice(&[1, 3, 3, 7]); // NOP, window scale
    maximal.resize(40, 1);
    for (name, options) in [("no options", Vec::new()), ("40 bytes", maximal)] {
        check.expect(
            name,
            &syn(SPAM_V4).tcp_options(&options).bytes(),
            Ipv4,
            Dropped,
        );
        check.expect(
            name,
            &syn(SPAM_V6).tcp_options(&options).bytes(),
            Ipv6,
            Dropped,
        );
        let relay = syn(RELAY_V4).tcp_options(&options).bytes();
        check.expect(name, &relay, Ipv4, Allowed);
    }
    // The data offset is not read: a lying one changes nothing.
    for data_offset in [0u8, 4, 15] {
        let mut frame = syn(SPAM_V4).bytes();
        frame[14 + 20 + 12] = data_offset << 4;
        check.expect(&format!("data offset {data_offset}"), &frame, Ipv4, Dropped);
    }
    // Exactly the 14 bytes up to the flags are enough.
    let fourteen = syn(SPAM_V6).transport_len(14).bytes();
    check.expect("14 TCP bytes", &fourteen, Ipv6, Dropped);
}

#[test]
fn ipv4_mapped_ipv6_sources() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    let mapped_relay = syn("::ffff:198.51.100.7").bytes();
    check.expect("mapped relay: IPv4 list", &mapped_relay, Ipv6, Allowed);
    let mapped_spam = syn("::ffff:203.0.113.66").bytes();
    check.expect("mapped other", &mapped_spam, Ipv6, Dropped);

    // The IPv6 list never covers mapped sources, even ::/0 or a mapped entry put in the
    // IPv6 trie by hand.
    let mut v6_everything = Check::new(&["::/0"]);
    v6_everything.expect("::/0, plain v6", &syn(SPAM_V6).bytes(), Ipv6, Allowed);
    v6_everything.expect("::/0, mapped", &mapped_spam, Ipv6, Dropped);
    let mut trap = Check::policy(Policy {
        ports: [25].into(),
        allow: [Prefix::new("::ffff:203.0.113.0".parse().unwrap(), 120)].into(),
        action: RuleAction::Drop,
    });
    trap.expect("mapped entry in the v6 trie", &mapped_spam, Ipv6, Dropped);
    // ... and the IPv4 list covers them.
    let mut v4_everything = Check::new(&["0.0.0.0/0"]);
    v4_everything.expect("0.0.0.0/0, mapped", &mapped_spam, Ipv6, Allowed);
    v4_everything.expect("0.0.0.0/0, plain v6", &syn(SPAM_V6).bytes(), Ipv6, Dropped);
    // Not mapped: ::203.0.113.66 (IPv4-compatible) and ::fffe:... are plain IPv6.
    let compatible = syn("::203.0.113.66").bytes();
    v4_everything.expect("IPv4-compatible is IPv6", &compatible, Ipv6, Dropped);
    let near = syn("::fffe:cb00:7142").bytes();
    v4_everything.expect("::fffe:* is IPv6", &near, Ipv6, Dropped);
}

/// For each prefix: addresses that must be inside and outside it.
fn prefix_edges(prefix: &str, inside: &[&str], outside: &[&str]) {
    use {Expect::*, Family::*};
    let mut check = Check::new(&[prefix]);
    for (sources, expect) in [(inside, Allowed), (outside, Dropped)] {
        for source in sources {
            let frame = syn(source).bytes();
            let family = if source.contains(':') { Ipv6 } else { Ipv4 };
            check.expect(&format!("{prefix}: {source}"), &frame, family, expect);
        }
    }
}

// The true edges of /0 and /1 are not documentation addresses; they only ever appear inside
// frames handed to BPF_PROG_TEST_RUN, which sends nothing anywhere.

#[test]
fn allowlist_prefix_edges_ipv4() {
    prefix_edges(
        "0.0.0.0/0",
        &["0.0.0.0", "192.0.2.1", "255.255.255.255"],
        &[],
    );
    prefix_edges(
        "128.0.0.0/1",
        &["128.0.0.0", "203.0.113.66", "255.255.255.255"],
        &["127.255.255.255", "0.0.0.0"],
    );
    prefix_edges(
        "0.0.0.0/1",
        &["0.0.0.0", "127.255.255.255"],
        &["128.0.0.0", "192.0.2.1"],
    );
    prefix_edges(
        "198.51.100.64/31",
        &["198.51.100.64", "198.51.100.65"],
        &["198.51.100.66", "198.51.100.63"],
    );
    prefix_edges(
        "198.51.100.7/32",
        &["198.51.100.7"],
        &["198.51.100.8", "198.51.100.6"],
    );
    prefix_edges(
        "192.0.2.128/25",
        &["192.0.2.128", "192.0.2.255", "::ffff:192.0.2.128"],
        &["192.0.3.0", "192.0.2.127", "::ffff:192.0.2.127"],
    );
}

#[test]
fn allowlist_prefix_edges_ipv6() {
    prefix_edges(
        "::/0",
        &[
            "::",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ],
        &[],
    );
    prefix_edges(
        "::/1",
        &[
            "::",
            "2001:db8::1",
            "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ],
        &["8000::"],
    );
    prefix_edges(
        "8000::/1",
        &["8000::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"],
        &["7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1"],
    );
    prefix_edges(
        "2001:db8:1::40/127",
        &["2001:db8:1::40", "2001:db8:1::41"],
        &["2001:db8:1::42", "2001:db8:1::3f"],
    );
    prefix_edges(
        "2001:db8:1::7/128",
        &["2001:db8:1::7"],
        &["2001:db8:1::8", "2001:db8:1::6"],
    );
    prefix_edges(
        "2001:db8:1::/48",
        &["2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"],
        &["2001:db8:2::", "2001:db8:0:ffff:ffff:ffff:ffff:ffff"],
    );
}

#[test]
fn trailers_past_the_ip_length_are_not_read() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    // An ACK whose total length stops after 13 TCP bytes, followed by a trailer that would
    // read as SYN: judged on the 13 bytes (malformed), never on the trailer.
    let mut v4 = ipv4_total_len(Frame::tcp(SPAM_V4, 25, ACK).bytes(), 20 + 13);
    v4[14 + 20 + 13] = SYN;
    check.expect("v4 trailer flags", &v4, Ipv4, Malformed);
    // Ethernet padding after a SYN changes nothing.
    let mut padded = syn(SPAM_V4).bytes();
    padded.extend_from_slice(&[0; 6]);
    check.expect("v4 padding", &padded, Ipv4, Dropped);
    let mut v6 = ipv6_payload_len(Frame::tcp(SPAM_V6, 25, ACK).bytes(), 13);
    v6[14 + 40 + 13] = SYN;
    check.expect("v6 trailer flags", &v6, Ipv6, Malformed);
    // Lengths that claim more than the frame holds: the kernel drops these.
    let long = ipv4_total_len(syn(SPAM_V4).bytes(), 41);
    check.expect("v4 total length past the end", &long, Ipv4, Malformed);
    let long6 = ipv6_payload_len(syn(SPAM_V6).bytes(), 21);
    check.expect("v6 payload length past the end", &long6, Ipv6, Malformed);
}

#[test]
fn frames_shorter_than_ethernet_cannot_be_test_run() {
    use {Expect::*, Family::*};
    // Why the differential test judges frames under 14 bytes on the reference alone: the
    // kernel refuses them as XDP test input. If this ever changes, that skip must go.
    let mut check = Check::new(ALLOW);
    let frame = syn(SPAM_V4).bytes();
    assert!(
        check.differential.run(&frame[..13]).is_err(),
        "13 bytes test-ran"
    );
    check.expect("13 bytes: reference", &frame[..13], Other, Malformed);
    check.expect(
        "14 bytes: IPv4, nothing after",
        &frame[..14],
        Ipv4,
        Malformed,
    );
}

/// Frames the differential test found (shrunk by proptest); the program was fixed for each.
#[test]
fn found_by_the_differential_test() {
    use {Expect::*, Family::*};
    let mut check = Check::new(ALLOW);
    // Frag(offset 0, M=1), Frag(offset 0, M=0), two hop-by-hop headers, then a third cut by
    // the payload length: still a first fragment, so F3. The program used to let the atomic
    // header reset "first fragment" and passed it as malformed.
    let double_fragment_chain = from_hex(
        "02000000000102000000000a86dd6000000000242c4020010db80000ffffffff\
         ffffffffffff20010db8ffff000000000000000000252c000001deadbeef0000\
         0000deadbeef0000001901020304000000005000faf000000000",
    );
    check.expect(
        "F3 behind two fragment headers",
        &double_fragment_chain,
        Ipv6,
        Evasive,
    );
    // Two hop-by-hop headers, Frag(0, M=1), Frag(0, M=0), then 7 TCP bytes: F1.
    let double_fragment_tiny = from_hex(
        "02000000000102000000000a86dd600000000027004020010db80000ffffffff\
         ffffffffffff20010db8ffff0000000000000000002500000000000000002c00\
         0000000000002c000001deadbeef06000000deadbeef00000019010203040000\
         00005000faf000000000",
    );
    check.expect(
        "F1 behind two fragment headers",
        &double_fragment_tiny,
        Ipv6,
        Evasive,
    );
    // The same chains from an allowlisted source pass.
    let mut relay = double_fragment_tiny.clone();
    relay[22..38].copy_from_slice(
        &"2001:db8:1::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    check.expect(
        "F1 behind two fragment headers, relay",
        &relay,
        Ipv6,
        Allowed,
    );

    // A fragment header cut by the payload length after 4 bytes (offset 0, M=1) is not read:
    // the chain is truncated outside a first fragment, so malformed. The program used to read
    // M from the cut header and drop it as F3.
    let mut cut_fragment = syn(SPAM_V6).bytes();
    cut_fragment[20] = 44;
    cut_fragment.splice(54..54, [6, 0, 0, 1, 0, 0, 0, 0]);
    let cut_fragment = ipv6_payload_len(cut_fragment, 4);
    check.expect(
        "fragment header cut after 4 bytes",
        &cut_fragment,
        Ipv6,
        Malformed,
    );
    // Behind a real first fragment the same cut is F3.
    let mut cut_behind_first = syn(SPAM_V6)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .bytes();
    cut_behind_first[54] = 44;
    cut_behind_first.splice(62..62, [6, 0, 0, 8, 0, 0, 0, 0]);
    let cut_behind_first = ipv6_payload_len(cut_behind_first, 8 + 5);
    check.expect(
        "cut fragment header behind a first one",
        &cut_behind_first,
        Ipv6,
        Evasive,
    );
    // A cut fragment header with offset 1 before TCP: not read, so not F2.
    let mut cut_offset_one = syn(SPAM_V6).bytes();
    cut_offset_one[20] = 44;
    cut_offset_one.splice(54..54, [6, 0, 0, 8, 0, 0, 0, 0]);
    let cut_offset_one = ipv6_payload_len(cut_offset_one, 6);
    check.expect(
        "cut offset-1 fragment header",
        &cut_offset_one,
        Ipv6,
        Malformed,
    );
}
