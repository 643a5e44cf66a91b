//! The allowlist fast path's bitmaps, kept in userspace next to the tries.
//!
//! The XDP program only asks an LPM trie when the source's /16 (summary level,
//! [`filter_common::SUMMARY_PREFIX_LEN`]) and then its /24 ([`filter_common::BLOCK_PREFIX_LEN`])
//! have their bits set. Each bitmap is derived state: bit `b` is set exactly when some
//! allowlisted prefix touches block `b` (contains it, or lies inside it). [`BlockIndex`] keeps
//! the prefixes and one bitmap and says which words changed; [`FastPath`] holds the levels
//! and writes only changed words into the kernel's maps, which are mmapped. The same machinery
//! keeps `ALLOW_V4_FULL`, the exact bitmap of /24 blocks that prefixes up to /24 cover
//! whole (for such prefixes "touches" is "covers").

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, AsRawFd as _},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use filter_common::{BlockWord, SLASH48_WORDS, slash48_bit};

/// The prefixes of one address family and the bitmap of blocks (of `block_len` bits: 16 for
/// the summary level, 24 for the block level) they imply.
///
/// Addresses are held as `u128` integers of `width` bits (32 for IPv4, 128 for IPv6).
#[derive(Clone, Debug)]
pub struct BlockIndex {
    width: u32,
    block_len: u32,
    prefixes: BTreeSet<(u128, u8)>,
    words: Vec<BlockWord>,
}

/// The first and last block (inclusive) a prefix touches.
fn block_range(width: u32, block_len: u32, addr: u128, len: u8) -> (u32, u32) {
    let shift = width - block_len;
    let first = (addr >> shift) as u32;
    let len = u32::from(len);
    if len >= block_len {
        (first, first)
    } else {
        (first, first + ((1u32 << (block_len - len)) - 1))
    }
}

fn mask(width: u32, addr: u128, len: u32) -> u128 {
    if len == 0 {
        0
    } else {
        let keep = u128::MAX << (128 - len);
        (addr << (128 - width) & keep) >> (128 - width)
    }
}

/// Bits of word `word` that fall inside blocks `first..=last`.
fn word_mask(word: u32, first: u32, last: u32) -> BlockWord {
    let lo = (word * 64).max(first) - word * 64;
    let hi = (word * 64 + 63).min(last) - word * 64;
    let width = hi - lo + 1;
    let ones = if width == 64 {
        BlockWord::MAX
    } else {
        (1 << width) - 1
    };
    ones << lo
}

impl BlockIndex {
    /// An empty index for addresses of `width` bits (32 or 128) cut into blocks of
    /// `block_len` bits (6 to 30).
    pub fn new(width: u32, block_len: u32) -> Self {
        assert!(width == 32 || width == 128, "address width is 32 or 128");
        assert!((6..=30).contains(&block_len), "block length 6 to 30");
        BlockIndex {
            width,
            block_len,
            prefixes: BTreeSet::new(),
            words: vec![0; 1 << (block_len - 6)],
        }
    }

    /// Number of words in the bitmap.
    pub fn word_count(&self) -> u32 {
        self.words.len() as u32
    }

    /// The current value of bitmap word `index`.
    pub fn word(&self, index: u32) -> BlockWord {
        self.words[index as usize]
    }

    /// Whether the bit of the block holding `addr` is set.
    pub fn touched(&self, addr: u128) -> bool {
        let block = (addr >> (self.width - self.block_len)) as u32;
        self.words[(block / 64) as usize] >> (block % 64) & 1 != 0
    }

    /// Adds a prefix (host bits must be clear); returns the indexes of the words that changed.
    pub fn insert(&mut self, addr: u128, len: u8) -> Vec<u32> {
        if !self.prefixes.insert((addr, len)) {
            return Vec::new();
        }
        let (first, last) = block_range(self.width, self.block_len, addr, len);
        let mut changed = Vec::new();
        for word in first / 64..=last / 64 {
            let old = self.words[word as usize];
            let new = old | word_mask(word, first, last);
            if new != old {
                self.words[word as usize] = new;
                changed.push(word);
            }
        }
        changed
    }

    /// Removes a prefix; returns the indexes of the words that changed (bits of blocks no other
    /// prefix touches any more).
    pub fn remove(&mut self, addr: u128, len: u8) -> Vec<u32> {
        if !self.prefixes.remove(&(addr, len)) {
            return Vec::new();
        }
        let (first, last) = block_range(self.width, self.block_len, addr, len);
        // The blocks of the removed prefix form an aligned region; recompute its bits from the
        // prefixes that still touch it.
        let region_len = u32::from(len).min(self.block_len);
        let region_start = mask(self.width, addr, region_len);
        let shift = self.width - self.block_len;
        let region_end = (u128::from(last) << shift) | ((1u128 << shift) - 1);
        // A shorter prefix containing the whole region keeps every bit set.
        let covered = (0..region_len).any(|l| {
            self.prefixes
                .contains(&(mask(self.width, region_start, l), l as u8))
        });
        let mut fresh = vec![0 as BlockWord; (last / 64 - first / 64 + 1) as usize];
        if covered {
            for word in first / 64..=last / 64 {
                fresh[(word - first / 64) as usize] = word_mask(word, first, last);
            }
        } else {
            // Every other prefix touching the region starts inside it (prefixes nest or are
            // disjoint), so a range scan finds them all.
            for &(q_addr, q_len) in self
                .prefixes
                .range((region_start, 0)..=(region_end, u8::MAX))
            {
                let (q_first, q_last) = block_range(self.width, self.block_len, q_addr, q_len);
                let (q_first, q_last) = (q_first.max(first), q_last.min(last));
                for word in q_first / 64..=q_last / 64 {
                    fresh[(word - first / 64) as usize] |= word_mask(word, q_first, q_last);
                }
            }
        }
        let mut changed = Vec::new();
        for word in first / 64..=last / 64 {
            let region = word_mask(word, first, last);
            let old = self.words[word as usize];
            let new = (old & !region) | fresh[(word - first / 64) as usize];
            if new != old {
                self.words[word as usize] = new;
                changed.push(word);
            }
        }
        changed
    }

    /// The bitmap recomputed from scratch from the prefixes (for checks).
    pub fn recomputed(&self) -> Vec<BlockWord> {
        let mut fresh = BlockIndex::new(self.width, self.block_len);
        for &(addr, len) in &self.prefixes {
            fresh.insert(addr, len);
        }
        fresh.words
    }
}

/// A block bitmap map (a `BPF_F_MMAPABLE` array of [`BlockWord`]) mapped into this process, so
/// a word is updated by one atomic store rather than a syscall: filling 100,000 prefixes or
/// turning the fast path off touches up to 2^18 words.
pub struct MappedBitmap {
    words: *const AtomicU64,
    count: u32,
}

// SAFETY: the mapping is plain shared memory owned by this value (unmapped on drop); all access
// goes through atomics, so moving it to another thread is sound.
unsafe impl Send for MappedBitmap {}
// SAFETY: as above; concurrent access through `&self` only uses atomic loads and stores.
unsafe impl Sync for MappedBitmap {}

impl MappedBitmap {
    /// Maps the array behind `fd` (which must have `count` u64 values and be mmapable).
    pub fn new(fd: impl AsFd, count: u32) -> anyhow::Result<Self> {
        // SAFETY: a fresh shared mapping of a BPF array's value area; the kernel checks the
        // length against the map and the flags; nothing else aliases it in this process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(count),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of a fast-path bitmap");
        }
        Ok(MappedBitmap {
            words: ptr as *const AtomicU64,
            count,
        })
    }

    fn bytes(count: u32) -> usize {
        count as usize * std::mem::size_of::<BlockWord>()
    }

    fn word(&self, index: u32) -> &AtomicU64 {
        assert!(index < self.count, "bitmap word {index} out of range");
        // SAFETY: index is in bounds of the mapping, which is page-aligned (so every u64 is
        // aligned) and lives as long as `self`.
        unsafe { &*self.words.add(index as usize) }
    }

    /// Stores one word. A single aligned 64-bit store: the XDP program sees the old or the new
    /// word, never a mix.
    pub fn store(&self, index: u32, value: BlockWord) {
        self.word(index).store(value, Ordering::Release);
    }

    pub fn load(&self, index: u32) -> BlockWord {
        self.word(index).load(Ordering::Acquire)
    }
}

impl Drop for MappedBitmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it outlives self.
        unsafe {
            libc::munmap(self.words as *mut libc::c_void, Self::bytes(self.count));
        }
    }
}

/// Address family of a prefix, as the fast path's levels are kept per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fam {
    V4,
    V6,
}

/// One kernel bitmap of the allowlist, as [`FastPath::new`] takes it.
pub struct LevelMap {
    pub fam: Fam,
    pub name: &'static str,
    /// Block length in bits (16 for a summary, 24 for blocks).
    pub block_len: u32,
    /// Only prefixes this long or shorter go in (`ALLOW_V4_FULL` takes prefixes up to
    /// /24, which cover their blocks whole); the filters take every prefix.
    pub longest: u8,
    /// A filter only says "maybe" (all ones while the fast path is off); an exact level is an
    /// answer the program trusts, so it keeps its real bits always.
    pub filter: bool,
    pub map: MappedBitmap,
}

/// One bitmap level of one family: the userspace index and the kernel map it mirrors.
struct Level {
    fam: Fam,
    name: &'static str,
    longest: u8,
    filter: bool,
    index: BlockIndex,
    map: MappedBitmap,
}

impl Level {
    /// Whether a prefix of `fam` and `len` goes in this level.
    fn takes(&self, fam: Fam, len: u8) -> bool {
        self.fam == fam && len <= self.longest
    }
}

/// Both levels (/16 summary, /24 blocks) of both families, kept equal to what the allowlist
/// implies: [`FastPath::insert`] before a trie insert, [`FastPath::remove`] after a removal.
pub struct FastPath {
    levels: Vec<Level>,
    slash48: Slash48Filter,
    enabled: bool,
}

impl FastPath {
    /// Wraps the kernel bitmaps. Levels are written in the order given: filters first, so a
    /// new prefix's exact bits are never set while a filter still hides them (harmless either
    /// way: it only delays the new prefix by a store).
    pub fn new(maps: Vec<LevelMap>, slash48: MappedBitmap) -> Self {
        let levels = maps
            .into_iter()
            .map(|level| Level {
                fam: level.fam,
                name: level.name,
                longest: level.longest,
                filter: level.filter,
                index: BlockIndex::new(
                    match level.fam {
                        Fam::V4 => 32,
                        Fam::V6 => 128,
                    },
                    level.block_len,
                ),
                map: level.map,
            })
            .collect();
        FastPath {
            levels,
            slash48: Slash48Filter {
                prefixes: BTreeSet::new(),
                counts: BTreeMap::new(),
                map: slash48,
            },
            enabled: true,
        }
    }

    /// Replaces every level's contents with what `prefixes` imply and writes every word (used
    /// at load, when pinned tries may hold prefixes the bitmaps do not reflect yet).
    pub fn rebuild(&mut self, prefixes: &[(Fam, u128, u8)]) {
        for level in &mut self.levels {
            let mut index = BlockIndex::new(level.index.width, level.index.block_len);
            for &(fam, addr, len) in prefixes {
                if level.takes(fam, len) {
                    index.insert(addr, len);
                }
            }
            level.index = index;
            for word in 0..level.index.word_count() {
                level.store(word, self.enabled);
            }
        }
        self.slash48.rebuild(prefixes, self.enabled);
    }

    /// Sets the bits of every block `addr/len` touches, in every level of `fam`.
    pub fn insert(&mut self, fam: Fam, addr: u128, len: u8) {
        let enabled = self.enabled;
        for level in self.levels.iter_mut().filter(|l| l.takes(fam, len)) {
            for word in level.index.insert(addr, len) {
                level.store(word, enabled);
            }
        }
        if Slash48Filter::takes(fam, len) {
            self.slash48.insert(addr, len, enabled);
        }
    }

    /// Clears the bits of blocks that only `addr/len` touched, in every level of `fam`.
    pub fn remove(&mut self, fam: Fam, addr: u128, len: u8) {
        let enabled = self.enabled;
        for level in self.levels.iter_mut().filter(|l| l.takes(fam, len)) {
            for word in level.index.remove(addr, len) {
                level.store(word, enabled);
            }
        }
        if Slash48Filter::takes(fam, len) {
            self.slash48.remove(addr, len, enabled);
        }
    }

    /// On: the kernel bitmaps hold the real bits. Off: the filters are all ones, so every
    /// lookup goes on to the exact structures (the verdicts are the same; only the cost differs).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        for level in self.levels.iter().filter(|level| level.filter) {
            for word in 0..level.index.word_count() {
                level.store(word, enabled);
            }
        }
        self.slash48.store_all(enabled);
    }

    /// Checks the kernel bitmaps against `prefixes` (the tries' contents).
    pub fn verify(&self, prefixes: &[(Fam, u128, u8)]) -> anyhow::Result<()> {
        for level in &self.levels {
            let mut expected = BlockIndex::new(level.index.width, level.index.block_len);
            for &(fam, addr, len) in prefixes {
                if level.takes(fam, len) {
                    expected.insert(addr, len);
                }
            }
            for (index, word) in expected.recomputed().iter().enumerate() {
                let want = if self.enabled || !level.filter {
                    *word
                } else {
                    BlockWord::MAX
                };
                let got = level.map.load(index as u32);
                if got != want {
                    anyhow::bail!(
                        "{}[{index}] is {got:#x}, the allowlist implies {want:#x}",
                        level.name
                    );
                }
            }
        }
        self.slash48.verify(prefixes, self.enabled)
    }
}

/// The IPv6 /48 filter (`ALLOW_V6_48`): bit [`slash48_bit`] of the /48 each prefix of /48
/// or longer lies in, counted, so a bit is cleared when the last prefix behind it goes.
struct Slash48Filter {
    prefixes: BTreeSet<(u128, u8)>,
    /// Prefixes behind each set bit.
    counts: BTreeMap<u32, u32>,
    map: MappedBitmap,
}

impl Slash48Filter {
    /// Prefixes shorter than /48 span many /48s: the short-block level stands for them.
    fn takes(fam: Fam, len: u8) -> bool {
        fam == Fam::V6 && len >= 48
    }

    fn bit(addr: u128) -> u32 {
        slash48_bit((addr >> 80) as u64)
    }

    fn word_of(&self, word: u32) -> BlockWord {
        let first = word * 64;
        self.counts
            .range(first..first + 64)
            .fold(0, |bits, (bit, _)| bits | 1 << (bit - first))
    }

    fn store(&self, word: u32, enabled: bool) {
        let value = if enabled {
            self.word_of(word)
        } else {
            BlockWord::MAX
        };
        self.map.store(word, value);
    }

    fn store_all(&self, enabled: bool) {
        for word in 0..SLASH48_WORDS {
            self.store(word, enabled);
        }
    }

    fn insert(&mut self, addr: u128, len: u8, enabled: bool) {
        if self.prefixes.insert((addr, len)) {
            let bit = Self::bit(addr);
            *self.counts.entry(bit).or_default() += 1;
            self.store(bit / 64, enabled);
        }
    }

    fn remove(&mut self, addr: u128, len: u8, enabled: bool) {
        if self.prefixes.remove(&(addr, len)) {
            let bit = Self::bit(addr);
            if let Some(count) = self.counts.get_mut(&bit) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&bit);
                }
            }
            self.store(bit / 64, enabled);
        }
    }

    fn rebuild(&mut self, prefixes: &[(Fam, u128, u8)], enabled: bool) {
        self.prefixes.clear();
        self.counts.clear();
        for &(fam, addr, len) in prefixes {
            if Self::takes(fam, len) && self.prefixes.insert((addr, len)) {
                *self.counts.entry(Self::bit(addr)).or_default() += 1;
            }
        }
        self.store_all(enabled);
    }

    fn verify(&self, prefixes: &[(Fam, u128, u8)], enabled: bool) -> anyhow::Result<()> {
        let mut expected = vec![0 as BlockWord; SLASH48_WORDS as usize];
        for &(fam, addr, len) in prefixes {
            if Self::takes(fam, len) {
                let bit = Self::bit(addr);
                expected[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        for (index, want) in expected.into_iter().enumerate() {
            let want = if enabled { want } else { BlockWord::MAX };
            let got = self.map.load(index as u32);
            if got != want {
                anyhow::bail!("ALLOW_V6_48[{index}] is {got:#x}, the allowlist implies {want:#x}");
            }
        }
        Ok(())
    }
}

impl Level {
    /// Copies one word into the kernel's bitmap (a filter's is all ones while the fast path is
    /// off). One atomic store; the bits not being changed are equal in the old and new word, so
    /// the program never sees a bit that is in neither state.
    fn store(&self, word: u32, enabled: bool) {
        let value = if enabled || !self.filter {
            self.index.word(word)
        } else {
            BlockWord::MAX
        };
        self.map.store(word, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> u128 {
        u128::from(text.parse::<std::net::Ipv4Addr>().unwrap().to_bits())
    }

    fn consistent(index: &BlockIndex) {
        assert!(index.words == index.recomputed(), "bitmap drifted");
    }

    #[test]
    fn host_prefix_sets_one_block() {
        let mut index = BlockIndex::new(32, 24);
        let changed = index.insert(v4("198.51.100.7"), 32);
        assert_eq!(changed.len(), 1);
        assert!(index.touched(v4("198.51.100.200")));
        assert!(!index.touched(v4("198.51.101.7")));
        assert!(!index.touched(v4("198.51.99.255")));
        index.remove(v4("198.51.100.7"), 32);
        assert!(!index.touched(v4("198.51.100.7")));
        consistent(&index);
    }

    #[test]
    fn short_prefixes_cover_many_blocks_and_nest() {
        let mut index = BlockIndex::new(32, 24);
        index.insert(v4("198.18.0.0"), 15);
        index.insert(v4("198.19.7.0"), 25);
        assert!(index.touched(v4("198.18.0.1")) && index.touched(v4("198.19.255.255")));
        assert!(!index.touched(v4("198.20.0.0")) && !index.touched(v4("198.17.255.255")));
        // Removing the /15 keeps only the block of the nested /25.
        index.remove(v4("198.18.0.0"), 15);
        assert!(index.touched(v4("198.19.7.255")));
        assert!(!index.touched(v4("198.19.8.0")) && !index.touched(v4("198.18.0.0")));
        consistent(&index);
        // Removing the /25 under a covering /16 keeps the block.
        index.insert(v4("198.19.0.0"), 16);
        index.remove(v4("198.19.7.0"), 25);
        assert!(index.touched(v4("198.19.7.0")));
        consistent(&index);
    }

    #[test]
    fn whole_space_and_two_prefixes_in_one_block() {
        let mut index = BlockIndex::new(32, 24);
        index.insert(0, 0);
        assert!(index.touched(v4("0.0.0.0")) && index.touched(v4("255.255.255.255")));
        index.insert(v4("203.0.113.0"), 26);
        index.insert(v4("203.0.113.128"), 25);
        index.remove(0, 0);
        assert!(index.touched(v4("203.0.113.1")));
        assert!(!index.touched(v4("203.0.114.1")));
        index.remove(v4("203.0.113.0"), 26);
        assert!(
            index.touched(v4("203.0.113.1")),
            "the /25 still touches the block"
        );
        index.remove(v4("203.0.113.128"), 25);
        assert!(!index.touched(v4("203.0.113.1")));
        consistent(&index);
    }

    #[test]
    fn ipv6_blocks_are_the_first_24_bits() {
        let v6 = |t: &str| t.parse::<std::net::Ipv6Addr>().unwrap().to_bits();
        let mut index = BlockIndex::new(128, 24);
        index.insert(v6("2001:db8:1::"), 48);
        assert!(index.touched(v6("2001:db8:bad::66")), "same /24 as the /48");
        assert!(index.touched(v6("2001:db9::1")), "2001:0d is one /24 block");
        assert!(!index.touched(v6("2001:e00::1")));
        index.insert(v6("2000::"), 3);
        index.remove(v6("2001:db8:1::"), 48);
        assert!(index.touched(v6("3fff:ffff::1")) && !index.touched(v6("4000::1")));
        consistent(&index);
    }

    #[test]
    fn summary_level_is_per_slash16() {
        let mut index = BlockIndex::new(32, 16);
        assert_eq!(index.word_count(), 1024);
        index.insert(v4("198.51.100.7"), 32);
        assert!(index.touched(v4("198.51.0.1")) && index.touched(v4("198.51.255.255")));
        assert!(!index.touched(v4("198.52.0.0")));
        index.insert(v4("10.0.0.0"), 8);
        assert!(index.touched(v4("10.255.0.0")));
        index.remove(v4("10.0.0.0"), 8);
        assert!(!index.touched(v4("10.1.0.0")));
        consistent(&index);
    }

    #[test]
    fn random_churn_stays_consistent() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut index = BlockIndex::new(32, 24);
        let mut summary = BlockIndex::new(32, 16);
        let mut live = Vec::new();
        for round in 0..2000 {
            if round % 3 == 2 && !live.is_empty() {
                let (addr, len) = live.swap_remove((next() % live.len() as u64) as usize);
                index.remove(addr, len);
                summary.remove(addr, len);
            } else {
                // Clustered, so prefixes nest and share blocks.
                let len = [8u8, 12, 16, 20, 23, 24, 25, 28, 32][(next() % 9) as usize];
                let addr = u128::from(0xc612_0000u32 | (next() as u32 & 0x0003_ffff));
                let addr = mask(32, addr, u32::from(len));
                index.insert(addr, len);
                summary.insert(addr, len);
                if !live.contains(&(addr, len)) {
                    live.push((addr, len));
                }
            }
        }
        consistent(&index);
        consistent(&summary);
    }
}
