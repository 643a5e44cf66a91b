//! Differential property test: frames from a grammar of the shapes the verdict rule cares
//! about (and plain random bytes) go through the real XDP program with BPF_PROG_TEST_RUN and
//! through the reference classifier; verdicts, counter changes and passed bytes must agree.
//!
//! Knobs (environment):
//! - `MXGUARD_DIFF_CASES`: frames per test (defaults below: 200,000 frames in all);
//! - `MXGUARD_DIFF_SEED`: the seed (decimal u64) to replay a run; every run prints its seed.
//!
//! A failure is shrunk by proptest and printed as hex, ready for `tests/tests/regressions.rs`.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use etherparse::EtherType;
use filter_common::{Counter, Family};
use proptest::{
    collection::vec,
    prelude::*,
    sample::{Index, select},
    test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner},
};
use test_kit::{
    differential::{Differential, regression_snippet, test_policy},
    frames::ethernet,
};
use verdict_reference::{Rule, RuleAction, Verdict};

// ---------------------------------------------------------------------------------------------
// The grammar.

#[derive(Clone, Debug)]
struct FrameSpec {
    /// Tag protocol IDs, outermost first.
    vlans: Vec<u16>,
    l3: L3,
    /// Applied in order after rendering: lying length fields, trailers, truncation.
    edits: Vec<Edit>,
}

#[derive(Clone, Debug)]
enum L3 {
    V4(V4Spec),
    V6(V6Spec),
    /// Any other ethertype (ARP, 0x9100, ...) with a random payload.
    Other(u16, Vec<u8>),
}

#[derive(Clone, Debug)]
struct V4Spec {
    source: Ipv4Addr,
    /// 0 to 40 bytes, a multiple of 4 (IHL 5 to 15).
    options: Vec<u8>,
    /// Flags (DF, MF, reserved) in the top 3 bits, offset in the low 13.
    flags_offset: u16,
    protocol: u8,
    tcp: TcpSpec,
}

#[derive(Clone, Debug)]
struct V6Spec {
    source: Ipv6Addr,
    chain: Vec<ExtSpec>,
    /// Next header after the last extension header (mostly TCP).
    last_next: u8,
    tcp: TcpSpec,
}

#[derive(Clone, Debug)]
enum ExtSpec {
    /// Hop-by-hop (0), routing (43) or destination options (60); length (units + 1) * 8.
    Options { kind: u8, units: u8, fill: u8 },
    /// Authentication header; length (len + 2) * 4 (len 0 is 8 bytes).
    Auth { len: u8 },
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool },
}

impl ExtSpec {
    fn number(&self) -> u8 {
        match self {
            ExtSpec::Options { kind, .. } => *kind,
            ExtSpec::Auth { .. } => 51,
            ExtSpec::Fragment { .. } => 44,
        }
    }

    fn render(&self, next: u8) -> Vec<u8> {
        match *self {
            ExtSpec::Options { units, fill, .. } => {
                let mut bytes = vec![fill; (usize::from(units) + 1) * 8];
                bytes[0] = next;
                bytes[1] = units;
                bytes
            }
            ExtSpec::Auth { len } => {
                let mut bytes = vec![0xa5; (usize::from(len) + 2) * 4];
                bytes[0] = next;
                bytes[1] = len;
                bytes[2] = 0;
                bytes[3] = 0;
                bytes
            }
            ExtSpec::Fragment { offset, more } => {
                // RFC 8200 4.5: offset in the top 13 bits of bytes 2-3, M in the lowest bit.
                let word = ((offset & 0x1fff) << 3) | u16::from(more);
                let [high, low] = word.to_be_bytes();
                vec![next, 0, high, low, 0xde, 0xad, 0xbe, 0xef]
            }
        }
    }
}

#[derive(Clone, Debug)]
struct TcpSpec {
    source_port: u16,
    destination_port: u16,
    flags: u8,
    /// 0 to 40 bytes, a multiple of 4.
    options: Vec<u8>,
    /// A data offset that does not match the options (0 to 15), or `None` for the true one.
    data_offset_lie: Option<u8>,
    payload: Vec<u8>,
    /// Keep only this many bytes of the segment; the IP length fields stay consistent, so
    /// this makes tiny first fragments and short segments rather than truncated frames.
    keep: Option<usize>,
}

impl TcpSpec {
    fn render(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(20 + self.options.len() + self.payload.len());
        bytes.extend_from_slice(&self.source_port.to_be_bytes());
        bytes.extend_from_slice(&self.destination_port.to_be_bytes());
        bytes.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // sequence
        bytes.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
        let data_offset = self
            .data_offset_lie
            .unwrap_or((20 + self.options.len() as u8) / 4);
        bytes.push(data_offset << 4);
        bytes.push(self.flags);
        bytes.extend_from_slice(&64_240u16.to_be_bytes()); // window
        bytes.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        bytes.extend_from_slice(&self.options);
        bytes.extend_from_slice(&self.payload);
        if let Some(keep) = self.keep {
            bytes.truncate(keep);
        }
        bytes
    }
}

#[derive(Clone, Debug)]
enum Edit {
    /// Set IPv4 total length / IPv6 payload length to the true value plus this (wrapping).
    LengthDelta(i16),
    /// Set IPv4 total length / IPv6 payload length to this.
    Length(u16),
    /// Set the IPv4 IHL nibble.
    Ihl(u8),
    /// Set the IP version nibble.
    Version(u8),
    /// Append bytes past the IP packet (Ethernet padding or an attacker's trailer).
    Trailer(Vec<u8>),
    /// Cut the frame at this point.
    Truncate(Index),
    /// Overwrite one byte anywhere.
    Byte(Index, u8),
}

impl FrameSpec {
    fn render(&self) -> Vec<u8> {
        let (ether_type, packet) = match &self.l3 {
            L3::V4(v4) => (0x0800, v4.render()),
            L3::V6(v6) => (0x86dd, v6.render()),
            L3::Other(ether_type, payload) => (*ether_type, payload.clone()),
        };
        let mut frame = ethernet(&self.vlans, EtherType(ether_type), &packet);
        let ip = frame.len() - packet.len();
        let v4 = matches!(self.l3, L3::V4(_));
        let length_field = if v4 { ip + 2 } else { ip + 4 };
        for edit in &self.edits {
            match edit {
                Edit::LengthDelta(_) | Edit::Length(_) if frame.len() >= length_field + 2 => {
                    let current =
                        u16::from_be_bytes([frame[length_field], frame[length_field + 1]]);
                    let value = match edit {
                        Edit::LengthDelta(delta) => current.wrapping_add_signed(*delta),
                        Edit::Length(value) => *value,
                        _ => unreachable!("guarded by the outer match"),
                    };
                    frame[length_field..length_field + 2].copy_from_slice(&value.to_be_bytes());
                }
                Edit::Ihl(ihl) if frame.len() > ip => {
                    frame[ip] = (frame[ip] & 0xf0) | (ihl & 0x0f);
                }
                Edit::Version(version) if frame.len() > ip => {
                    frame[ip] = (frame[ip] & 0x0f) | (version << 4);
                }
                Edit::Trailer(bytes) => frame.extend_from_slice(bytes),
                Edit::Truncate(at) => {
                    let len = at.index(frame.len() + 1);
                    frame.truncate(len);
                }
                Edit::Byte(at, value) if !frame.is_empty() => {
                    let index = at.index(frame.len());
                    frame[index] = *value;
                }
                _ => {}
            }
        }
        frame
    }
}

impl V4Spec {
    fn render(&self) -> Vec<u8> {
        let transport = self.tcp.render();
        let header_len = 20 + self.options.len();
        let mut bytes = Vec::with_capacity(header_len + transport.len());
        bytes.push(0x40 | (header_len / 4) as u8);
        bytes.push(0);
        bytes.extend_from_slice(&((header_len + transport.len()) as u16).to_be_bytes());
        bytes.extend_from_slice(&0x4242u16.to_be_bytes()); // identification
        bytes.extend_from_slice(&self.flags_offset.to_be_bytes());
        bytes.push(64);
        bytes.push(self.protocol);
        bytes.extend_from_slice(&[0, 0]); // checksum: never looked at
        bytes.extend_from_slice(&self.source.octets());
        bytes.extend_from_slice(&[203, 0, 113, 25]);
        bytes.extend_from_slice(&self.options);
        bytes.extend(transport);
        bytes
    }
}

impl V6Spec {
    fn render(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        for (index, ext) in self.chain.iter().enumerate() {
            let next = self
                .chain
                .get(index + 1)
                .map(ExtSpec::number)
                .unwrap_or(self.last_next);
            payload.extend(ext.render(next));
        }
        payload.extend(self.tcp.render());
        let first = self
            .chain
            .first()
            .map(ExtSpec::number)
            .unwrap_or(self.last_next);
        let mut bytes = vec![0x60, 0, 0, 0];
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.push(first);
        bytes.push(64);
        bytes.extend_from_slice(&self.source.octets());
        bytes.extend_from_slice(&"2001:db8:ffff::25".parse::<Ipv6Addr>().unwrap().octets());
        bytes.extend(payload);
        bytes
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

/// IPv4 sources: the edges of every allowlist prefix in `test_policy`, and anything in the
/// documentation ranges.
fn ipv4_source() -> impl Strategy<Value = Ipv4Addr> {
    let edges: Vec<Ipv4Addr> = [
        "192.0.1.255",
        "192.0.2.0",
        "192.0.2.1",
        "192.0.2.127",
        "192.0.2.128",
        "192.0.2.255",
        "198.51.100.6",
        "198.51.100.7",
        "198.51.100.8",
        "198.51.100.63",
        "198.51.100.64",
        "198.51.100.65",
        "198.51.100.66",
        "203.0.113.0",
        "203.0.113.5",
        "203.0.113.255",
    ]
    .iter()
    .map(|text| text.parse().unwrap())
    .collect();
    let bases = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];
    prop_oneof![
        select(edges),
        (select(bases.to_vec()), any::<u8>())
            .prop_map(|(b, last)| Ipv4Addr::new(b[0], b[1], b[2], last)),
    ]
}

fn ipv6_source() -> impl Strategy<Value = Ipv6Addr> {
    let edges: Vec<Ipv6Addr> = [
        "2001:db8:0:ffff:ffff:ffff:ffff:ffff",
        "2001:db8:1::",
        "2001:db8:1::1",
        "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
        "2001:db8:2::",
        "2001:db8:2::4",
        "2001:db8:2::5",
        "2001:db8:2::6",
        "2001:db8:3::",
        "2001:db8:3::1",
        "2001:db8:3::2",
        "2001:db8:2:ffff:ffff:ffff:ffff:ffff",
    ]
    .iter()
    .map(|text| text.parse().unwrap())
    .collect();
    prop_oneof![
        4 => select(edges),
        2 => ipv4_source().prop_map(|v4| v4.to_ipv6_mapped()),
        2 => (0u16..8, any::<u16>(), any::<u64>()).prop_map(|(net, sub, host)| {
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                net,
                sub,
                (host >> 48) as u16,
                (host >> 32) as u16,
                (host >> 16) as u16,
                host as u16,
            )
        }),
    ]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(25),
        1 => select(vec![1u16, 587, 65535, 24, 26, 80, 0]),
        1 => any::<u16>(),
    ]
}

/// Padding to a multiple of 4: whole option words.
fn words(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|n| vec(any::<u8>(), n * 4))
}

fn tcp() -> impl Strategy<Value = TcpSpec> {
    (
        any::<u16>(),
        port(),
        any::<u8>(),
        prop_oneof![3 => Just(Vec::new()), 1 => words(10)],
        prop_oneof![6 => Just(None), 1 => (0u8..16).prop_map(Some)],
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 0..24)],
        prop_oneof![4 => Just(None), 1 => (0usize..21).prop_map(Some)],
    )
        .prop_map(
            |(source_port, destination_port, flags, options, data_offset_lie, payload, keep)| {
                TcpSpec {
                    source_port,
                    destination_port,
                    flags,
                    options,
                    data_offset_lie,
                    payload,
                    keep,
                }
            },
        )
}

/// Fragment offsets in 8-byte units: 0 (whole or first), 1 (F2), 2 and beyond (later).
fn fragment_offset() -> impl Strategy<Value = u16> {
    prop_oneof![4 => Just(0u16), 2 => Just(1), 1 => Just(2), 1 => 3u16..0x2000]
}

fn ipv4() -> impl Strategy<Value = L3> {
    (
        ipv4_source(),
        prop_oneof![2 => Just(Vec::new()), 1 => words(10)],
        (
            // The three flag bits: none, DF, MF, or any mix (reserved bit included).
            prop_oneof![
                3 => Just(0u16),
                1 => Just(0x4000),
                2 => Just(0x2000),
                1 => (0u16..8).prop_map(|bits| bits << 13),
            ],
            prop_oneof![5 => Just(0u16), 3 => fragment_offset()],
        )
            .prop_map(|(flags, offset)| flags | offset),
        prop_oneof![10 => Just(6u8), 1 => select(vec![17u8, 1, 0, 255]), 1 => any::<u8>()],
        tcp(),
    )
        .prop_map(|(source, options, flags_offset, protocol, tcp)| {
            L3::V4(V4Spec {
                source,
                options,
                flags_offset,
                protocol,
                tcp,
            })
        })
}

fn ext() -> impl Strategy<Value = ExtSpec> {
    prop_oneof![
        3 => (select(vec![0u8, 43, 60]), prop_oneof![3 => Just(0u8), 1 => 1u8..4], any::<u8>())
            .prop_map(|(kind, units, fill)| ExtSpec::Options { kind, units, fill }),
        1 => (0u8..6).prop_map(|len| ExtSpec::Auth { len }),
        // Mostly first fragments, so truncated chains and tiny TCP headers behind them
        // (F1, F3) come up often; later offsets end the walk at once.
        2 => (
            prop_oneof![8 => Just(0u16), 2 => Just(1), 1 => Just(2), 1 => 3u16..0x2000],
            proptest::bool::weighted(0.7),
        )
            .prop_map(|(offset, more)| ExtSpec::Fragment { offset, more }),
    ]
}

fn ipv6() -> impl Strategy<Value = L3> {
    (
        ipv6_source(),
        prop_oneof![
            2 => Just(Vec::new()),
            4 => vec(ext(), 1..4),
            2 => vec(ext(), 4..=9),
            1 => vec(ext(), 10..13),
        ],
        prop_oneof![
            12 => Just(6u8),
            1 => select(vec![17u8, 58, 59, 50, 0, 43, 44, 51, 60]),
            1 => any::<u8>(),
        ],
        tcp(),
    )
        .prop_map(|(source, chain, last_next, tcp)| {
            L3::V6(V6Spec {
                source,
                chain,
                last_next,
                tcp,
            })
        })
}

fn vlans() -> impl Strategy<Value = Vec<u16>> {
    prop_oneof![
        6 => Just(Vec::new()),
        3 => vec(select(vec![0x8100u16, 0x88a8]), 1..=2),
        1 => vec(select(vec![0x8100u16, 0x88a8]), 3..=4),
        1 => vec(select(vec![0x8100u16, 0x88a8, 0x9100]), 1..=3),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => prop_oneof![Just(-1i16), Just(1), Just(-13), Just(-14), -64i16..64]
            .prop_map(Edit::LengthDelta),
        1 => any::<u16>().prop_map(Edit::Length),
        1 => (0u8..16).prop_map(Edit::Ihl),
        1 => (0u8..16).prop_map(Edit::Version),
        2 => vec(any::<u8>(), 1..40).prop_map(Edit::Trailer),
        4 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| Edit::Byte(at, value)),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop_oneof![3 => Just(Vec::new()), 2 => vec(edit(), 1..3)]
}

fn frame_with(l3: impl Strategy<Value = L3>) -> impl Strategy<Value = Vec<u8>> {
    (vlans(), l3, edits()).prop_map(|(vlans, l3, edits)| FrameSpec { vlans, l3, edits }.render())
}

fn other_l3() -> impl Strategy<Value = L3> {
    (
        select(vec![0x0806u16, 0x9100, 0x88cc, 0x0000, 0xffff]),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(ether_type, payload)| L3::Other(ether_type, payload))
}

/// Random bytes: anything at all, or an Ethernet header with an IP ethertype in front of
/// random bytes whose first byte looks like an IP version, so the parser gets past layer 2.
fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 14..160),
        (
            select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8]),
            select(vec![0x45u8, 0x46, 0x4f, 0x60, 0x08, 0x86]),
            vec(any::<u8>(), 0..160),
        )
            .prop_map(|(ether_type, first, rest)| {
                let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
                frame.extend_from_slice(&ether_type.to_be_bytes());
                frame.push(first);
                frame.extend(rest);
                frame
            }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// How often each rule row and each (family, counter) pair came up in a run.
#[derive(Default)]
struct Coverage {
    rules: BTreeMap<Rule, u64>,
    counters: BTreeMap<(&'static str, bool, Option<Counter>), u64>,
}

impl Coverage {
    fn add(&mut self, verdict: Verdict, rule: Rule) {
        *self.rules.entry(rule).or_default() += 1;
        let key = (verdict.family.label(), verdict.pass, verdict.counter);
        *self.counters.entry(key).or_default() += 1;
    }

    /// Fails unless every row in `must_reach` came up: a generator that stopped reaching a
    /// row would otherwise leave that row silently untested. The rows listed per test come
    /// up hundreds of times per default run, so this does not flake.
    fn require(&self, name: &str, must_reach: &[Rule]) {
        eprintln!("{name}: rule rows reached: {:?}", self.rules);
        eprintln!(
            "{name}: (family, pass, counter) reached: {:?}",
            self.counters
        );
        let missing: Vec<&Rule> = must_reach
            .iter()
            .filter(|rule| !self.rules.contains_key(rule))
            .collect();
        assert!(missing.is_empty(), "{name}: no frame reached {missing:?}");
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a decimal number")),
    )
}

fn seed() -> u64 {
    env_u64("MXGUARD_DIFF_SEED").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
    })
}

/// Runs `cases` frames from `strategy` (scaled by `MXGUARD_DIFF_CASES`, which is the total
/// per test) through a freshly loaded program under `action`.
fn differential(
    name: &str,
    cases: u32,
    action: RuleAction,
    strategy: impl Strategy<Value = Vec<u8>>,
    must_reach: &[Rule],
) {
    let cases = env_u64("MXGUARD_DIFF_CASES").map_or(cases, |n| n as u32);
    // Each test gets its own seed from the base one, so one number replays the whole run.
    let base = seed();
    let seed = base
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    eprintln!("{name}: {cases} frames, MXGUARD_DIFF_SEED={base} replays this run");

    let checker =
        RefCell::new(Differential::new(test_policy(action)).expect("loading the program"));
    let config = Config {
        cases,
        // A failure is printed as hex for a named regression test instead.
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = Instant::now();
    let count = Cell::new(0u32);
    let coverage = RefCell::new(Coverage::default());
    let result = runner.run(&strategy, |frame| {
        count.set(count.get() + 1);
        // Counters are read after every frame: ~7 us here, a third of the cost per frame,
        // and it pins a counter bug on the one frame that caused it.
        let (verdict, rule) = checker
            .borrow_mut()
            .check(&frame, true)
            .map_err(TestCaseError::fail)?;
        coverage.borrow_mut().add(verdict, rule);
        Ok(())
    });
    match result {
        Ok(()) => {
            checker
                .borrow_mut()
                .check_counters()
                .unwrap_or_else(|reason| panic!("{name}: at the end of the run: {reason}"));
            eprintln!(
                "{name}: {} frames agreed in {:.1?}",
                count.get(),
                started.elapsed()
            );
            coverage.borrow().require(name, must_reach);
        }
        Err(TestError::Fail(reason, frame)) => {
            let checker = checker.borrow();
            panic!(
                "{name} (MXGUARD_DIFF_SEED={base}): minimal failing frame after shrinking:\n{}",
                regression_snippet(&frame, checker.policy(), reason.message())
            );
        }
        Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
    }
}

/// Only if a test runs its default case count: a small `MXGUARD_DIFF_CASES` (a quick local
/// run) may legitimately miss rare rows.
fn rows(rows: &[Rule]) -> Vec<Rule> {
    if std::env::var_os("MXGUARD_DIFF_CASES").is_some() {
        Vec::new()
    } else {
        rows.to_vec()
    }
}

/// Every row a frame of `family` can reach: those of layer 2, of that IP version and of TCP.
fn rows_of(family: Family) -> Vec<Rule> {
    let reachable: Vec<Rule> = Rule::ALL
        .into_iter()
        .filter(|rule| rule.family().is_none_or(|only| only == family))
        .collect();
    rows(&reachable)
}

#[test]
fn ipv4_frames_agree() {
    differential(
        "ipv4_frames_agree",
        60_000,
        RuleAction::Drop,
        frame_with(ipv4()),
        &rows_of(Family::Ipv4),
    );
}

#[test]
fn ipv6_frames_agree() {
    differential(
        "ipv6_frames_agree",
        70_000,
        RuleAction::Drop,
        frame_with(ipv6()),
        &rows_of(Family::Ipv6),
    );
}

#[test]
fn mixed_frames_agree_in_monitor_mode() {
    use Rule::*;
    let any_l3 = prop_oneof![3 => ipv4(), 3 => ipv6(), 1 => other_l3()];
    differential(
        "mixed_frames_agree_in_monitor_mode",
        40_000,
        RuleAction::Monitor,
        frame_with(any_l3),
        &rows(&[
            NotIp,
            TcpProtectedSyn,
            TinyFirstFragment,
            Ipv4OffsetOne,
            Ipv6OffsetOne,
            Ipv6ChainTooLong,
            Ipv6FirstFragmentChainTruncated,
        ]),
    );
}

#[test]
fn random_bytes_agree() {
    use Rule::*;
    differential(
        "random_bytes_agree",
        30_000,
        RuleAction::Drop,
        random_frame(),
        &rows(&[
            NotIp,
            Ipv4BadHeader,
            Ipv4BadTotalLength,
            Ipv6BadHeader,
            Ipv6BadPayloadLength,
        ]),
    );
}
