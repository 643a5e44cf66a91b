//! mxguard's XDP program: drop TCP SYNs to protected ports unless the source is allowlisted.
//!
//! The rule is written down, case by case, in `docs/verdict-rule.md`; this file implements it
//! and the userspace reference classifier (`filter_user::reference`) implements it again,
//! independently. Nothing here logs per packet: every frame bumps exactly one per-CPU counter row.
#![no_std]
#![no_main]

mod reject;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use filter_common::{
    ALLOWLIST_CAPACITY, Action, AllowEntry, BLOCK_WORDS, BlockWord, Config, Counter,
    DROP_SAMPLES_BYTES, DROP_SAMPLES_PER_CPU_PER_SEC, DROPPED_SOURCES_CAPACITY, DropSample,
    DroppedSource, Family, FamilyCounters, MAX_IPV6_EXT_HEADERS, PORT_PROTECTED, PORT_SLOTS,
    PortFlag, RATE_SLOT_REJECT, RATE_SLOT_SAMPLES, RATE_SLOTS, RateWindow, SAMPLE_KIND_EVASIVE,
    SAMPLE_KIND_SYN, SUMMARY_WORDS,
};

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

/// `BPF_F_MMAPABLE` from the kernel's uapi (not re-exported by aya-ebpf 0.2).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Fast path: bit set = some IPv4 allowlist prefix touches this /24 (see `BLOCK_PREFIX_LEN`).
/// Mmapable so userspace updates words with plain stores instead of one syscall each.
#[map(name = "ALLOW_V4_BLOCKS")]
static ALLOW_V4_BLOCKS: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

/// Fast path, first level: bit set = some IPv4 allowlist prefix touches this /16.
#[map(name = "ALLOW_V4_SUMMARY")]
static ALLOW_V4_SUMMARY: Array<BlockWord> = Array::with_max_entries(SUMMARY_WORDS, BPF_F_MMAPABLE);

/// Fast path, first level: bit set = some IPv6 allowlist prefix touches this /16.
#[map(name = "ALLOW_V6_SUMMARY")]
static ALLOW_V6_SUMMARY: Array<BlockWord> = Array::with_max_entries(SUMMARY_WORDS, BPF_F_MMAPABLE);

/// Fast path: bit set = some IPv6 allowlist prefix touches this /24.
#[map(name = "ALLOW_V6_BLOCKS")]
static ALLOW_V6_BLOCKS: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

#[map(name = "PORTS")]
static PORTS: Array<PortFlag> = Array::with_max_entries(PORT_SLOTS, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<FamilyCounters> = PerCpuArray::with_max_entries(Family::COUNT, 0);

#[map(name = "RATE_WINDOWS")]
static RATE_WINDOWS: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(RATE_SLOTS, 0);

#[map(name = "DROP_SAMPLES")]
static DROP_SAMPLES: RingBuf = RingBuf::with_byte_size(DROP_SAMPLES_BYTES, 0);

/// Written by the daemon only (from the samples); declared here so it is pinned with the rest.
#[map(name = "DROPPED_SOURCES")]
static DROPPED_SOURCES: LruHashMap<[u8; 16], DroppedSource> =
    LruHashMap::with_max_entries(DROPPED_SOURCES_CAPACITY, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// Bytes of TCP header needed to judge a segment: ports (0..4) up to the flags byte (13).
const TCP_JUDGE_LEN: usize = 14;
/// Bytes of TCP header holding the destination port.
const TCP_PORTS_LEN: usize = 4;
const TCP_SYN: u8 = 0x02;
/// Denied frames per CPU and family between two looks at the sampling clock (a power of two).
const SAMPLE_EVERY: u64 = 64;
const TCP_ACK: u8 = 0x10;

/// How the frame was judged; decides both the XDP action and the counter bumped.
#[derive(Clone, Copy)]
enum Outcome {
    /// Not a protected SYN: pass untouched.
    Pass,
    /// Impossible header: pass, the kernel discards it.
    Malformed,
    /// Protected SYN from an allowlisted source.
    SynAllowed,
    /// Protected SYN from any other source; its TCP header starts at `tcp`.
    SynDenied { tcp: usize },
    /// A fragment or header chain that could hide a SYN, from a source not allowlisted.
    EvasiveDenied,
}

/// Where the frame sits in a fragmented datagram, as far as the judgement cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragment {
    /// Not fragmented (or an IPv6 atomic fragment).
    Whole,
    /// Offset 0 with more fragments to come: its transport header may be cut short.
    First,
    /// Offset 1 (8 bytes): can only serve to overwrite a TCP header (RFC 1858).
    OffsetOne,
}

#[derive(Clone, Copy)]
enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What happens to a denied frame, by the configured action.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Monitor action: passed, counted as a would-be drop.
    WouldDrop,
    /// Answered with a RST through XDP_TX.
    Rejected,
}

/// Bounds of the frame; every read is checked against `end` (the verifier insists).
struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    /// Copies `N` bytes at `offset`, or `None` if the frame is shorter.
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if self.start + offset + N > self.end {
            return None;
        }
        // SAFETY: the N bytes at start+offset lie inside [data, data_end), checked just above.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const [u8; N]) })
    }

    /// Writes `bytes` at `offset`; false if the frame is shorter.
    #[inline(always)]
    fn write<const N: usize>(&self, offset: usize, bytes: &[u8; N]) -> bool {
        if self.start + offset + N > self.end {
            return false;
        }
        // SAFETY: the N bytes at start+offset lie inside [data, data_end), checked just above.
        unsafe { core::ptr::write_unaligned((self.start + offset) as *mut [u8; N], *bytes) };
        true
    }

    /// Bytes between `offset` and the end of the frame.
    #[inline(always)]
    fn len_from(&self, offset: usize) -> usize {
        (self.end - self.start).saturating_sub(offset)
    }
}

#[inline(always)]
fn be16(hi: u8, lo: u8) -> u16 {
    u16::from_be_bytes([hi, lo])
}

#[xdp]
pub fn mxguard(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (family, outcome, l3) = classify(&frame);
    // One lookup of this CPU's counter row serves the sampling gate and the count.
    let row = COUNTERS.get_ptr_mut(family as u32);
    let verdict = match outcome {
        Outcome::SynDenied { .. } | Outcome::EvasiveDenied => {
            deny(&ctx, &frame, family, outcome, l3, row)
        }
        _ => Verdict::Pass,
    };
    count(row, outcome, verdict);
    match verdict {
        Verdict::Pass | Verdict::WouldDrop => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Rejected => xdp_action::XDP_TX,
    }
}

/// Applies the configured action to a denied frame. The config is read only here, so passing
/// frames never pay for it.
#[inline(always)]
fn deny(
    ctx: &XdpContext,
    frame: &Frame,
    family: Family,
    outcome: Outcome,
    l3: usize,
    row: Option<*mut FamilyCounters>,
) -> Verdict {
    // Before the action: `reject` rewrites the headers the sample reads.
    sample(frame, family, outcome, l3, row);
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Drop;
    };
    match Action::from_raw(config.action) {
        Action::Drop => Verdict::Drop,
        Action::Monitor => Verdict::WouldDrop,
        Action::Reject => match outcome {
            // Evasive fragments get no answer: there is no whole TCP header to answer.
            Outcome::SynDenied { tcp }
                if reject::within_rate(
                    &RATE_WINDOWS,
                    RATE_SLOT_REJECT,
                    config.reject_per_cpu_per_sec,
                ) && reject::answer_with_rst(ctx, frame, family, l3, tcp) =>
            {
                Verdict::Rejected
            }
            _ => Verdict::Drop,
        },
    }
}

/// Sends a few denied sources per second per CPU to userspace; under a flood the rest cost
/// only the rate check.
#[inline(always)]
fn sample(
    frame: &Frame,
    family: Family,
    outcome: Outcome,
    l3: usize,
    row: Option<*mut FamilyCounters>,
) {
    // Only every SAMPLE_EVERY-th denied frame of this CPU and family (the first included) even
    // looks at the clock: under a flood the rest cost one mask of counters already in cache.
    if let Some(row) = row {
        // SAFETY: this CPU's counter row; XDP runs with preemption off.
        let row = unsafe { &*row };
        let denied: u64 = Counter::DENIALS.iter().map(|&c| row.get(c)).sum();
        if denied & (SAMPLE_EVERY - 1) != 0 {
            return;
        }
    }
    if !reject::within_rate(
        &RATE_WINDOWS,
        RATE_SLOT_SAMPLES,
        DROP_SAMPLES_PER_CPU_PER_SEC,
    ) {
        return;
    }
    let mut event = DropSample {
        family: family as u8,
        ..DropSample::default()
    };
    match family {
        Family::Ipv4 => match frame.bytes::<4>(l3 + 12) {
            Some(source) => event.source[..4].copy_from_slice(&source),
            None => return,
        },
        Family::Ipv6 => match frame.bytes::<16>(l3 + 8) {
            Some(source) => event.source = source,
            None => return,
        },
        Family::Other => return,
    }
    match outcome {
        Outcome::SynDenied { tcp } => {
            event.kind = SAMPLE_KIND_SYN;
            if let Some(ports) = frame.bytes::<4>(tcp) {
                event.port = be16(ports[2], ports[3]);
            }
        }
        _ => event.kind = SAMPLE_KIND_EVASIVE,
    }
    // A full ring (no reader) just loses the sample.
    let _ = DROP_SAMPLES.output::<DropSample>(&event, 0);
}

#[inline(always)]
fn count(row: Option<*mut FamilyCounters>, outcome: Outcome, verdict: Verdict) {
    let Some(row) = row else {
        return;
    };
    // SAFETY: a per-CPU array slot for this CPU; XDP runs with preemption off, so no one else
    // writes it concurrently.
    let row = unsafe { &mut *row };
    row.bump(Counter::Frames);
    let counter = match (outcome, verdict) {
        (_, Verdict::WouldDrop) => Counter::SynWouldDrop,
        (_, Verdict::Rejected) => Counter::SynRejected,
        (Outcome::SynDenied { .. }, _) => Counter::SynDropped,
        (Outcome::EvasiveDenied, _) => Counter::EvasiveDropped,
        (Outcome::Malformed, _) => Counter::Malformed,
        (Outcome::SynAllowed, _) => Counter::SynAllowed,
        (Outcome::Pass, _) => return,
    };
    row.bump(counter);
}

#[inline(always)]
/// Judges a frame; also returns where its IP header starts.
fn classify(frame: &Frame) -> (Family, Outcome, usize) {
    let Some(eth) = frame.bytes::<ETH_HLEN>(0) else {
        return (Family::Other, Outcome::Malformed, 0);
    };
    let mut ethertype = be16(eth[12], eth[13]);
    let mut offset = ETH_HLEN;
    // Up to two VLAN tags (802.1Q or 802.1ad, in any order); a third leaves a VLAN ethertype,
    // which is not IP and passes.
    for _ in 0..2 {
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let Some(tag) = frame.bytes::<4>(offset) else {
                return (Family::Other, Outcome::Malformed, 0);
            };
            ethertype = be16(tag[2], tag[3]);
            offset += 4;
        }
    }
    match ethertype {
        ETH_P_IPV4 => (Family::Ipv4, classify_ipv4(frame, offset), offset),
        ETH_P_IPV6 => (Family::Ipv6, classify_ipv6(frame, offset), offset),
        _ => (Family::Other, Outcome::Pass, offset),
    }
}

#[inline(always)]
fn classify_ipv4(frame: &Frame, offset: usize) -> Outcome {
    let Some(ip) = frame.bytes::<20>(offset) else {
        return Outcome::Malformed;
    };
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || header_len < 20 {
        return Outcome::Malformed;
    }
    // The kernel trims the frame to the IP total length, so that bounds the transport bytes.
    let total_len = be16(ip[2], ip[3]) as usize;
    if total_len < header_len || total_len > frame.len_from(offset) {
        return Outcome::Malformed;
    }
    if ip[9] != IPPROTO_TCP {
        return Outcome::Pass;
    }
    let flags_offset = be16(ip[6], ip[7]);
    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment_offset = flags_offset & 0x1fff;
    let fragment = match fragment_offset {
        0 if more_fragments => Fragment::First,
        0 => Fragment::Whole,
        1 => Fragment::OffsetOne,
        // A later fragment carries no TCP header; reassembly rejects overlaps.
        _ => return Outcome::Pass,
    };
    let source = Source::V4([ip[12], ip[13], ip[14], ip[15]]);
    judge_tcp(
        frame,
        offset + header_len,
        total_len - header_len,
        fragment,
        source,
    )
}

#[inline(always)]
fn classify_ipv6(frame: &Frame, offset: usize) -> Outcome {
    let Some(ip) = frame.bytes::<40>(offset) else {
        return Outcome::Malformed;
    };
    if ip[0] >> 4 != 6 {
        return Outcome::Malformed;
    }
    let payload_len = be16(ip[4], ip[5]) as usize;
    if 40 + payload_len > frame.len_from(offset) {
        return Outcome::Malformed;
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&ip[8..24]);
    let source = Source::V6(source);

    let payload_end = offset + 40 + payload_len;
    let mut next_header = ip[6];
    let mut cursor = offset + 40;
    let mut fragment = Fragment::Whole;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AH | IPV6_FRAGMENT => {
                let Some(ext) = frame.bytes::<4>(cursor) else {
                    return truncated_chain(fragment, source);
                };
                if cursor + 4 > payload_end {
                    return truncated_chain(fragment, source);
                }
                let header_len = match next_header {
                    IPV6_FRAGMENT => {
                        // A fragment header cut short is not read: the chain is truncated
                        // as it stands before this header.
                        if cursor + 8 > payload_end {
                            return truncated_chain(fragment, source);
                        }
                        let fragment_offset = be16(ext[2], ext[3]) >> 3;
                        let more_fragments = ext[3] & 1 != 0;
                        fragment = match fragment_offset {
                            0 if more_fragments => Fragment::First,
                            // An atomic fragment header after a first-fragment one does not
                            // make the datagram whole: the outer header already queued this
                            // frame for reassembly, and the rest of the chain comes later.
                            0 => fragment,
                            1 if ext[0] == IPPROTO_TCP => Fragment::OffsetOne,
                            _ => return Outcome::Pass,
                        };
                        8
                    }
                    IPV6_AH => (ext[1] as usize + 2) * 4,
                    _ => (ext[1] as usize + 1) * 8,
                };
                next_header = ext[0];
                header_len
            }
            _ => break,
        };
        if fragment == Fragment::OffsetOne {
            return judge_tcp(frame, cursor, 0, fragment, source);
        }
        cursor += header_len;
        if cursor > payload_end {
            return truncated_chain(fragment, source);
        }
    }
    match next_header {
        IPPROTO_TCP => judge_tcp(frame, cursor, payload_end - cursor, fragment, source),
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AH | IPV6_FRAGMENT => {
            // Longer chain than we walk: the kernel would still find the TCP header.
            deny_unless_allowlisted(source, Outcome::EvasiveDenied)
        }
        _ => Outcome::Pass,
    }
}

/// The header chain ends before its last header does. In a first fragment the rest may come in
/// the next one (RFC 7112 forbids it, attackers do it anyway); elsewhere the kernel drops it.
#[inline(always)]
fn truncated_chain(fragment: Fragment, source: Source) -> Outcome {
    if fragment == Fragment::First {
        deny_unless_allowlisted(source, Outcome::EvasiveDenied)
    } else {
        Outcome::Malformed
    }
}

/// Judges a TCP segment whose header starts at `offset`, with `len` transport bytes in this frame
/// (already known to lie inside the frame).
#[inline(always)]
fn judge_tcp(
    frame: &Frame,
    offset: usize,
    len: usize,
    fragment: Fragment,
    source: Source,
) -> Outcome {
    if fragment == Fragment::OffsetOne {
        return deny_unless_allowlisted(source, Outcome::EvasiveDenied);
    }
    if len >= TCP_JUDGE_LEN {
        let Some(tcp) = frame.bytes::<TCP_JUDGE_LEN>(offset) else {
            return Outcome::Malformed;
        };
        let flags = tcp[13];
        if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
            return Outcome::Pass;
        }
        if !port_protected(be16(tcp[2], tcp[3])) {
            return Outcome::Pass;
        }
        return deny_unless_allowlisted(source, Outcome::SynDenied { tcp: offset });
    }
    if fragment != Fragment::First {
        // A whole segment too short for a TCP header: the kernel discards it.
        return Outcome::Malformed;
    }
    // Tiny first fragment (RFC 1858): the flags come in a later fragment. Let it through only
    // when the port is readable and not protected, or the source is allowlisted.
    if len >= TCP_PORTS_LEN
        && let Some(ports) = frame.bytes::<TCP_PORTS_LEN>(offset)
        && !port_protected(be16(ports[2], ports[3]))
    {
        return Outcome::Pass;
    }
    deny_unless_allowlisted(source, Outcome::EvasiveDenied)
}

#[inline(always)]
fn port_protected(port: u16) -> bool {
    matches!(PORTS.get(port as u32), Some(&PORT_PROTECTED))
}

#[inline(always)]
fn deny_unless_allowlisted(source: Source, denied: Outcome) -> Outcome {
    if allowlisted(source) {
        Outcome::SynAllowed
    } else {
        denied
    }
}

#[inline(always)]
fn allowlisted(source: Source) -> bool {
    match source {
        Source::V4(address) => allowlisted_v4(address),
        Source::V6(address) => {
            // ::ffff:a.b.c.d is an IPv4 host: judge it by the IPv4 list.
            let mapped =
                address[..10].iter().all(|b| *b == 0) && address[10] == 0xff && address[11] == 0xff;
            if mapped {
                allowlisted_v4([address[12], address[13], address[14], address[15]])
            } else {
                // The trie is only asked when the block bitmap says a prefix may match: a miss
                // in an untouched block (a random spoofed source) costs one array read.
                may_be_allowed(
                    &ALLOW_V6_SUMMARY,
                    &ALLOW_V6_BLOCKS,
                    [address[0], address[1], address[2]],
                ) && ALLOW_V6.get(Key::new(128, address)).is_some()
            }
        }
    }
}

#[inline(always)]
fn allowlisted_v4(address: [u8; 4]) -> bool {
    may_be_allowed(
        &ALLOW_V4_SUMMARY,
        &ALLOW_V4_BLOCKS,
        [address[0], address[1], address[2]],
    ) && ALLOW_V4.get(Key::new(32, address)).is_some()
}

/// The fast path: false when no allowlisted prefix touches the /16, then the /24, that the
/// address starting with `top` falls in (so the trie cannot match); true means "ask the trie".
#[inline(always)]
fn may_be_allowed(summary: &Array<BlockWord>, blocks: &Array<BlockWord>, top: [u8; 3]) -> bool {
    // Shifts, not from_be_bytes: LLVM then builds the indexes from the byte loads directly.
    let slash16 = (u32::from(top[0]) << 8) | u32::from(top[1]);
    bit_set(summary, slash16) && bit_set(blocks, (slash16 << 8) | u32::from(top[2]))
}

/// Bit `index` of a bitmap. A failed lookup (impossible: indexes are below the map's size)
/// answers "set", the safe side.
#[inline(always)]
fn bit_set(bitmap: &Array<BlockWord>, index: u32) -> bool {
    match bitmap.get(index >> 6) {
        Some(word) => (word >> (index & 63)) & 1 != 0,
        None => true,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
