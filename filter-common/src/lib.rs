//! Types shared by the XDP program (`filter-ebpf`) and userspace (`filter-user`).
//!
//! Everything here is `#[repr(C)]` plain data with no padding, so both sides agree on the byte
//! layout of every map key and value. The verdict rule itself is written down in
//! `docs/verdict-rule.md`.
#![no_std]

/// Names of the maps in the BPF object. Userspace looks maps up by these names.
pub mod map_names {
    /// LPM trie of allowed IPv4 source prefixes: key `Key<[u8; 4]>`, value [`super::AllowEntry`].
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// LPM trie of allowed IPv6 source prefixes: key `Key<[u8; 16]>`, value [`super::AllowEntry`].
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Array indexed by TCP port: value [`super::PortFlag`].
    pub const PORTS: &str = "PORTS";
    /// Single-entry array holding the run-time [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU array of [`super::FamilyCounters`], indexed by [`super::Family`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Fast path in front of `ALLOW_V4`: array of [`super::BlockWord`], one bit per /24 block
    /// (see [`super::BLOCK_PREFIX_LEN`]).
    pub const ALLOW_V4_BLOCKS: &str = "ALLOW_V4_BLOCKS";
    /// Fast path in front of `ALLOW_V6`: one bit per /24 block of IPv6 space.
    pub const ALLOW_V6_BLOCKS: &str = "ALLOW_V6_BLOCKS";
    /// First level of the IPv4 fast path: one bit per /16 (see [`super::SUMMARY_PREFIX_LEN`]).
    pub const ALLOW_V4_SUMMARY: &str = "ALLOW_V4_SUMMARY";
    /// First level of the IPv6 fast path: one bit per /16 of IPv6 space.
    pub const ALLOW_V6_SUMMARY: &str = "ALLOW_V6_SUMMARY";
    /// IPv4, exact: one bit per /24 block that a prefix of length 24 or less covers whole
    /// (array of [`super::BlockWord`], like `ALLOW_V4_BLOCKS`).
    pub const ALLOW_V4_FULL: &str = "ALLOW_V4_FULL";
    /// IPv4, exact: hash from a /24 block's index (the address's top 24 bits as a `u32`) to a
    /// [`super::BlockMask`], the addresses of that block that prefixes /25 to /32 cover.
    pub const ALLOW_V4_MASKS: &str = "ALLOW_V4_MASKS";
    /// IPv6 fast path behind `ALLOW_V6_BLOCKS`: one bit per /24 block that a prefix shorter
    /// than /48 touches (array of [`super::BlockWord`]).
    pub const ALLOW_V6_SHORT: &str = "ALLOW_V6_SHORT";
    /// IPv6 fast path: a one-hash Bloom filter of the /48s that prefixes of /48 or longer lie
    /// in, bit [`super::slash48_bit`] (array of [`super::BlockWord`], [`super::SLASH48_WORDS`]).
    pub const ALLOW_V6_48: &str = "ALLOW_V6_48";
    /// Per-CPU array of [`super::RateWindow`]: RST and drop-sample rate limits.
    pub const RATE_WINDOWS: &str = "RATE_WINDOWS";
    /// Ring buffer of [`super::DropSample`]s, a rate-limited sample of denied sources.
    pub const DROP_SAMPLES: &str = "DROP_SAMPLES";
    /// LRU hash, written by the daemon only: source address (IPv6 or IPv4-mapped) to
    /// [`super::DroppedSource`]. It outlives the daemon, so `status` can show top sources.
    pub const DROPPED_SOURCES: &str = "DROPPED_SOURCES";
    /// Every map, for pinning. The fast-path bitmaps and the IPv4 block maps are pinned with
    /// the tries they are derived from; `Filter` rebuilds them from the tries at every load, so
    /// a pin directory made before they existed is taken over safely (the tries keep every
    /// prefix, so an older program on the same pins still judges right). New names are at most
    /// 15 bytes, so the kernel's copy (map info, `bpftool map`) keeps them whole.
    pub const ALL: [&str; 16] = [
        ALLOW_V4,
        ALLOW_V6,
        PORTS,
        CONFIG,
        COUNTERS,
        RATE_WINDOWS,
        DROP_SAMPLES,
        DROPPED_SOURCES,
        ALLOW_V4_SUMMARY,
        ALLOW_V4_BLOCKS,
        ALLOW_V6_SUMMARY,
        ALLOW_V6_BLOCKS,
        ALLOW_V4_FULL,
        ALLOW_V4_MASKS,
        ALLOW_V6_SHORT,
        ALLOW_V6_48,
    ];
}

/// Name of the XDP program function in the BPF object.
pub const PROGRAM_NAME: &str = "mxguard";

/// Capacity of each allowlist trie. Tries are created with `BPF_F_NO_PREALLOC`, so an
/// unused capacity costs no memory.
pub const ALLOWLIST_CAPACITY: u32 = 262_144;

/// Number of entries in the port array: one per possible TCP port (index = port).
pub const PORT_SLOTS: u32 = 65_536;

/// How many VLAN tags (802.1Q or 802.1ad, in any order) the program looks through; a frame
/// with more is not IP as far as the verdict rule is concerned, and passes.
pub const MAX_VLAN_TAGS: u32 = 2;

/// How many IPv6 extension headers the program walks before giving up on a frame.
/// A frame whose header chain is longer than this is "unjudgeable" (see the verdict rule).
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;

/// The allowlist fast path: the address space is cut into blocks of this prefix length (the
/// first 24 bits of an IPv4 or IPv6 address), and a bitmap says which blocks any allowlisted
/// prefix touches. A source in an untouched block cannot be allowlisted, so the program skips
/// the trie lookup: a flood from random spoofed sources is almost all such misses. A set bit
/// only means "ask the trie", so the bitmap never changes a verdict as long as every block an
/// allowlisted prefix touches has its bit set; userspace (`Filter`) keeps it that way, setting
/// bits before a trie insert and clearing them after a trie removal.
pub const BLOCK_PREFIX_LEN: u32 = 24;

/// One word of a block bitmap: bit `b % 64` of word `b / 64` is block `b`.
pub type BlockWord = u64;

/// Number of [`BlockWord`]s in each block bitmap (2^24 blocks / 64 bits = 2 MiB).
pub const BLOCK_WORDS: u32 = 1 << (BLOCK_PREFIX_LEN - 6);

/// The fast path's first level: the same kind of bitmap at /16 granularity, checked before the
/// /24 one. At 8 KiB it stays in the CPU cache, so a flood of random sources, most of which
/// fall in a /16 no allowlisted prefix touches, never reaches the 2 MiB bitmap's cold lines.
pub const SUMMARY_PREFIX_LEN: u32 = 16;

/// Number of [`BlockWord`]s in each summary bitmap (2^16 / 64 = 1024, 8 KiB).
pub const SUMMARY_WORDS: u32 = 1 << (SUMMARY_PREFIX_LEN - 6);

/// The IPv6 /48 filter's size: 2^20 bits (128 KiB), so a few tens of thousands of /48s leave
/// most bits clear.
pub const SLASH48_BITS_LOG2: u32 = 20;

/// Number of [`BlockWord`]s in the /48 filter.
pub const SLASH48_WORDS: u32 = 1 << (SLASH48_BITS_LOG2 - 6);

/// The /48 filter's bit for an IPv6 address whose first 48 bits are `top48` (a Fibonacci
/// hash). One definition for the program and userspace: they must agree bit for bit. A set bit
/// only means "ask the trie", so collisions cost a lookup, never a verdict.
#[inline(always)]
pub const fn slash48_bit(top48: u64) -> u32 {
    (top48.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLASH48_BITS_LOG2)) as u32
}

/// Value of `ALLOW_V4_MASKS`: bit `d % 64` of word `d / 64` is set when the address
/// `a.b.c.d` of the block `a.b.c.0/24` lies in an allowlisted prefix of /25 to /32. Together
/// with `ALLOW_V4_FULL` (prefixes up to /24) it answers for every IPv4 address exactly,
/// with one hash lookup instead of an LPM trie walk: most entries are hosts from DNS.
pub type BlockMask = [u64; 4];

/// Value stored in the allowlist tries. Its content is not used by the program (a hit is
/// what matters); userspace keeps it at 1.
pub type AllowEntry = u8;

/// Value stored in the port array: [`PORT_PROTECTED`] or [`PORT_OPEN`].
pub type PortFlag = u8;
/// SYNs to this port are filtered.
pub const PORT_PROTECTED: PortFlag = 1;
/// SYNs to this port are not looked at.
pub const PORT_OPEN: PortFlag = 0;

/// What the program does with a SYN it would drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drop it (`XDP_DROP`).
    Drop = 0,
    /// Pass it and count it as a would-be drop. Used before the allowlist holds anything,
    /// so a daemon that starts while DNS is down does not cut off the relays blind.
    Monitor = 1,
    /// Answer a denied SYN with a TCP RST sent back out with `XDP_TX` (like iptables
    /// `REJECT --reject-with tcp-reset`), within a per-CPU rate limit; drop beyond it.
    Reject = 2,
}

impl Action {
    /// The action's name on the command line, in the config file and in `status`.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Monitor => "monitor",
            Action::Reject => "reject",
        }
    }

    /// Decodes the value stored in [`Config::action`]; unknown values mean `Drop`, the safe side.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Action::Monitor,
            2 => Action::Reject,
            _ => Action::Drop,
        }
    }
}

/// Run-time settings, stored at index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// An [`Action`] as `u32`.
    pub action: u32,
    /// With `Reject`: at most this many RSTs per second per CPU; denied SYNs beyond it are
    /// dropped, so a flood cannot turn the filter into a reflector.
    pub reject_per_cpu_per_sec: u32,
}

/// Default for [`Config::reject_per_cpu_per_sec`].
pub const DEFAULT_REJECT_PER_CPU_PER_SEC: u32 = 1000;

/// Per-CPU state of a rate limit: a one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub window_start_ns: u64,
    pub sent: u64,
}

/// Slots of the `RATE_WINDOWS` array.
pub const RATE_SLOT_REJECT: u32 = 0;
pub const RATE_SLOT_SAMPLES: u32 = 1;
pub const RATE_SLOTS: u32 = 2;

/// At most this many drop samples per second per CPU reach the ring buffer.
pub const DROP_SAMPLES_PER_CPU_PER_SEC: u32 = 64;
/// Ring buffer size (a power of two, multiple of the page size).
pub const DROP_SAMPLES_BYTES: u32 = 64 * 1024;
/// Capacity of the `DROPPED_SOURCES` LRU hash.
pub const DROPPED_SOURCES_CAPACITY: u32 = 4096;

/// Why a sampled frame was denied.
pub const SAMPLE_KIND_SYN: u8 = 0;
pub const SAMPLE_KIND_EVASIVE: u8 = 1;

/// One sampled denied frame, as the program writes it to `DROP_SAMPLES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    /// The source address: 16 bytes for IPv6, the first 4 for IPv4.
    pub source: [u8; 16],
    /// A [`Family`] as `u8`.
    pub family: u8,
    /// [`SAMPLE_KIND_SYN`] or [`SAMPLE_KIND_EVASIVE`].
    pub kind: u8,
    /// Destination port of a denied SYN (0 for evasive frames).
    pub port: u16,
    pub _pad: [u8; 4],
}

/// Value of `DROPPED_SOURCES`: what the daemon has seen of one source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DroppedSource {
    pub samples: u64,
    pub last_seen_unix_secs: u64,
    pub last_port: u16,
    pub _pad: [u8; 6],
}

/// Address family a counter row belongs to: the index into the `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Non-IP frames, and frames too short or too deep in VLAN tags to tell.
    Other = 0,
    Ipv4 = 1,
    Ipv6 = 2,
}

impl Family {
    /// All families, in index order.
    pub const ALL: [Family; 3] = [Family::Other, Family::Ipv4, Family::Ipv6];
    /// Number of rows in the `COUNTERS` array.
    pub const COUNT: u32 = 3;

    pub const fn label(self) -> &'static str {
        match self {
            Family::Other => "other",
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// The counters the program keeps per address family, in their order within a
/// [`FamilyCounters`] row. This is the one definition: the program, the daemon's log line,
/// `status`, the metrics, the reference classifier and the tests all iterate [`Counter::ALL`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Every frame the program saw.
    Frames = 0,
    /// SYNs to a protected port passed because the source is allowlisted.
    SynAllowed = 1,
    /// SYNs to a protected port dropped because the source is not allowlisted.
    SynDropped = 2,
    /// SYNs that would have been dropped but were passed because the action is `Monitor`.
    SynWouldDrop = 3,
    /// SYNs answered with a TCP RST (action `Reject`); those over the rate limit count as
    /// `SynDropped`.
    SynRejected = 4,
    /// Fragments and over-long header chains dropped because they could hide a SYN
    /// (tiny first fragments, fragment offset 1, IPv6 chains past the walk bound).
    EvasiveDropped = 5,
    /// Frames with an impossible header (bad version, IHL < 5, truncation): passed to the
    /// kernel, which discards them.
    Malformed = 6,
}

impl Counter {
    /// Number of counters in a row.
    pub const COUNT: usize = 7;

    /// Every counter, in row order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::Frames,
        Counter::SynAllowed,
        Counter::SynDropped,
        Counter::SynWouldDrop,
        Counter::SynRejected,
        Counter::EvasiveDropped,
        Counter::Malformed,
    ];

    /// The counters a denied frame bumps, whatever the action made of it.
    pub const DENIALS: [Counter; 4] = [
        Counter::SynDropped,
        Counter::SynWouldDrop,
        Counter::SynRejected,
        Counter::EvasiveDropped,
    ];

    /// The counter's name in logs, `status` and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Frames => "frames",
            Counter::SynAllowed => "syn_allowed",
            Counter::SynDropped => "syn_dropped",
            Counter::SynWouldDrop => "syn_would_drop",
            Counter::SynRejected => "syn_rejected",
            Counter::EvasiveDropped => "evasive_dropped",
            Counter::Malformed => "malformed",
        }
    }

    /// For the counters of protected SYNs, the verdict they count (the metrics' `verdict`
    /// label); `None` for the others.
    pub const fn syn_verdict(self) -> Option<&'static str> {
        match self {
            Counter::SynAllowed => Some("allowed"),
            Counter::SynDropped => Some("dropped"),
            Counter::SynWouldDrop => Some("would_drop"),
            Counter::SynRejected => Some("rejected"),
            Counter::Frames | Counter::EvasiveDropped | Counter::Malformed => None,
        }
    }
}

/// One row of per-CPU counters, indexed by [`Counter`]. Plain `u64`s, so the struct has no
/// padding; the layout is the one pinned maps of layout v1 hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyCounters {
    pub values: [u64; Counter::COUNT],
}

impl FamilyCounters {
    #[inline(always)]
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    #[inline(always)]
    pub fn bump(&mut self, counter: Counter) {
        self.values[counter as usize] += 1;
    }

    /// Adds another row (for summing the per-CPU values).
    pub fn add(&mut self, other: &FamilyCounters) {
        for (value, other) in self.values.iter_mut().zip(other.values) {
            *value += other;
        }
    }

    /// Every counter with its value, in row order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL
            .into_iter()
            .map(|counter| (counter, self.get(counter)))
    }
}

/// Counters summed over all CPUs, one row per [`Family`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [FamilyCounters; Family::COUNT as usize]);

impl Counters {
    pub fn family(&self, family: Family) -> &FamilyCounters {
        &self.0[family as usize]
    }

    pub fn family_mut(&mut self, family: Family) -> &mut FamilyCounters {
        &mut self.0[family as usize]
    }

    /// All families added up.
    pub fn total(&self) -> FamilyCounters {
        let mut total = FamilyCounters::default();
        for row in &self.0 {
            total.add(row);
        }
        total
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these are repr(C) structs of integers with no padding, valid for any bytes.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FamilyCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RateWindow {}
    // SAFETY: as above (explicit padding fields, no implicit padding).
    unsafe impl aya::Pod for super::DropSample {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DroppedSource {}
}

/// What every BPF object of the workspace needs besides its programs: a panic handler (the
/// verifier proves no path reaches it) and a GPL-compatible licence, without which the kernel
/// refuses GPL-only helpers such as `bpf_ktime_get_coarse_ns`. Invoke once at the crate root.
#[cfg(target_arch = "bpf")]
#[macro_export]
macro_rules! bpf_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
