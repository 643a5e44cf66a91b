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
    /// Per-CPU single-entry array of [`super::RejectWindow`] (RST rate limit state).
    pub const REJECT_WINDOW: &str = "REJECT_WINDOW";
    /// Every map, for pinning.
    pub const ALL: [&str; 6] = [ALLOW_V4, ALLOW_V6, PORTS, CONFIG, COUNTERS, REJECT_WINDOW];
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

/// Per-CPU state of the RST rate limit: a one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectWindow {
    pub window_start_ns: u64,
    pub sent: u64,
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
    /// SYNs answered with a TCP RST (action `Reject`); those over the rate limit count as
    /// `syn_dropped`.
    pub syn_rejected: u64,
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
        self.syn_rejected += other.syn_rejected;
        self.evasive_dropped += other.evasive_dropped;
        self.malformed += other.malformed;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these are repr(C) structs of integers with no padding, valid for any bytes.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FamilyCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RejectWindow {}
}
