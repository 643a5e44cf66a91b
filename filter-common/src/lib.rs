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
}

/// Name of the XDP program function in the BPF object.
pub const PROGRAM_NAME: &str = "mxguard";

/// Capacity of each allowlist trie. Tries are created with `BPF_F_NO_PREALLOC`, so an
/// unused capacity costs no memory.
pub const ALLOWLIST_CAPACITY: u32 = 262_144;

/// Number of entries in the port array: one per possible TCP port (index = port).
pub const PORT_SLOTS: u32 = 65_536;

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
}

impl Action {
    /// Decodes the value stored in [`Config::action`]; unknown values mean `Drop`, the safe side.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Action::Monitor,
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

/// One row of per-CPU counters. Every field is a plain `u64` so the struct has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyCounters {
    /// Every frame the program saw.
    pub frames: u64,
    /// SYNs to a protected port passed because the source is allowlisted.
    pub syn_allowed: u64,
    /// SYNs to a protected port dropped because the source is not allowlisted.
    pub syn_dropped: u64,
    /// SYNs that would have been dropped but were passed because the action is `Monitor`.
    pub syn_would_drop: u64,
    /// Fragments and over-long header chains dropped because they could hide a SYN
    /// (tiny first fragments, fragment offset 1, IPv6 chains past the walk bound).
    pub evasive_dropped: u64,
    /// Frames with an impossible header (bad version, IHL < 5, truncation): passed to the
    /// kernel, which discards them.
    pub malformed: u64,
}

impl FamilyCounters {
    /// Adds another row (for summing the per-CPU values).
    pub fn add(&mut self, other: &FamilyCounters) {
        self.frames += other.frames;
        self.syn_allowed += other.syn_allowed;
        self.syn_dropped += other.syn_dropped;
        self.syn_would_drop += other.syn_would_drop;
        self.evasive_dropped += other.evasive_dropped;
        self.malformed += other.malformed;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are repr(C) structs of integers with no padding, valid for any bytes.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FamilyCounters {}
}
