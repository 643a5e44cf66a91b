//! Every map of the program, with the reason it exists. Names, key and value types are the
//! pinned layout userspace relies on (`filter_common::map_names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use filter_common::{
    ALLOWLIST_CAPACITY, AllowEntry, BLOCK_WORDS, BlockMask, BlockWord, Config, DROP_SAMPLES_BYTES,
    DROPPED_SOURCES_CAPACITY, DroppedSource, Family, FamilyCounters, PORT_SLOTS, PortFlag,
    RATE_SLOTS, RateWindow, SLASH48_WORDS, SUMMARY_WORDS,
};

/// `BPF_F_MMAPABLE` from the kernel's uapi (not re-exported by aya-ebpf 0.2).
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// `BPF_F_NO_PREALLOC`: hash elements are allocated on insert and freed after an RCU grace
/// period, so a value the program is reading is never reused under it.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Allowed IPv4 source prefixes: the record userspace keeps (and `status` reads). The program
/// judges IPv4 by `ALLOW_V4_FULL` and `ALLOW_V4_MASKS`, derived from it.
#[map(name = "ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> =
    LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

/// Allowed IPv6 source prefixes.
#[map(name = "ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> =
    LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

/// Fast path, first level: bit set = some IPv4 allowlist prefix touches this /16. Mmapable so
/// userspace updates words with plain stores instead of one syscall each.
#[map(name = "ALLOW_V4_SUMMARY")]
pub static ALLOW_V4_SUMMARY: Array<BlockWord> =
    Array::with_max_entries(SUMMARY_WORDS, BPF_F_MMAPABLE);

/// Fast path: bit set = some IPv4 allowlist prefix touches this /24 (see `BLOCK_PREFIX_LEN`).
#[map(name = "ALLOW_V4_BLOCKS")]
pub static ALLOW_V4_BLOCKS: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

/// IPv4, exact: bit set = a prefix of length 24 or less covers this /24 block whole.
#[map(name = "ALLOW_V4_FULL")]
pub static ALLOW_V4_FULL: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

/// IPv4, exact: the addresses of a /24 block (keyed by its index) that prefixes /25 to /32
/// cover. Most allowlist entries are hosts; one hash lookup replaces an LPM trie walk.
#[map(name = "ALLOW_V4_MASKS")]
pub static ALLOW_V4_MASKS: HashMap<u32, BlockMask> =
    HashMap::with_max_entries(ALLOWLIST_CAPACITY, BPF_F_NO_PREALLOC);

/// Fast path, first level: bit set = some IPv6 allowlist prefix touches this /16.
#[map(name = "ALLOW_V6_SUMMARY")]
pub static ALLOW_V6_SUMMARY: Array<BlockWord> =
    Array::with_max_entries(SUMMARY_WORDS, BPF_F_MMAPABLE);

/// Fast path: bit set = some IPv6 allowlist prefix touches this /24.
#[map(name = "ALLOW_V6_BLOCKS")]
pub static ALLOW_V6_BLOCKS: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

/// IPv6 fast path: bit set = a prefix shorter than /48 touches this /24 block.
#[map(name = "ALLOW_V6_SHORT")]
pub static ALLOW_V6_SHORT: Array<BlockWord> = Array::with_max_entries(BLOCK_WORDS, BPF_F_MMAPABLE);

/// IPv6 fast path: bit `slash48_bit` set = some prefix of /48 or longer may lie in this /48.
#[map(name = "ALLOW_V6_48")]
pub static ALLOW_V6_48: Array<BlockWord> = Array::with_max_entries(SLASH48_WORDS, BPF_F_MMAPABLE);

/// The protected ports: indexed by TCP port, so a SYN costs one array read.
#[map(name = "PORTS")]
pub static PORTS: Array<PortFlag> = Array::with_max_entries(PORT_SLOTS, 0);

/// The action and the RST rate, changeable while attached; read only for denied frames.
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// One counter row per CPU and family: every frame bumps it, without locks.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<FamilyCounters> = PerCpuArray::with_max_entries(Family::COUNT, 0);

/// Per-CPU one-second windows of the RST and drop-sample rate limits.
#[map(name = "RATE_WINDOWS")]
pub static RATE_WINDOWS: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(RATE_SLOTS, 0);

/// Denied sources for the daemon's log and `status`, a few per second.
#[map(name = "DROP_SAMPLES")]
pub static DROP_SAMPLES: RingBuf = RingBuf::with_byte_size(DROP_SAMPLES_BYTES, 0);

/// Written by the daemon only (from the samples); declared here so it is pinned with the rest.
#[map(name = "DROPPED_SOURCES")]
pub static DROPPED_SOURCES: LruHashMap<[u8; 16], DroppedSource> =
    LruHashMap::with_max_entries(DROPPED_SOURCES_CAPACITY, 0);
