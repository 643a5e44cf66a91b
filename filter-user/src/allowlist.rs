//! The allowlist: both LPM tries (the record), the fast-path bitmaps in front of them and the
//! exact IPv4 block structures derived from them, as one type that keeps them in step: what
//! the program reads is written before a trie insert and cleared after a trie removal.

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use filter_common::{
    AllowEntry, BLOCK_PREFIX_LEN, BLOCK_WORDS, SLASH48_WORDS, SUMMARY_PREFIX_LEN, SUMMARY_WORDS,
    map_names,
};

use crate::{
    block_masks::{self, BlockMasks},
    cidr::Cidr,
    fast_path::{Fam, FastPath, LevelMap, MappedBitmap},
    maps::MapSource,
};

/// The value of every trie entry: the program only asks whether a key matches.
const PRESENT: AllowEntry = 1;

/// The two LPM tries, on their own: what `status` reads.
pub struct AllowlistTries {
    v4: LpmTrie<MapData, [u8; 4], AllowEntry>,
    v6: LpmTrie<MapData, [u8; 16], AllowEntry>,
}

impl AllowlistTries {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        Ok(AllowlistTries {
            v4: source.typed(map_names::ALLOW_V4)?,
            v6: source.typed(map_names::ALLOW_V6)?,
        })
    }

    /// The prefixes in both tries.
    pub fn read(&self) -> anyhow::Result<BTreeSet<Cidr>> {
        let mut set = BTreeSet::new();
        for key in self.v4.keys() {
            let key = key.context("reading the IPv4 allowlist")?;
            set.insert(Cidr::new(
                key.data().into(),
                u8::try_from(key.prefix_len())?,
            )?);
        }
        for key in self.v6.keys() {
            let key = key.context("reading the IPv6 allowlist")?;
            let addr = std::net::Ipv6Addr::from(key.data());
            let prefix_len = u8::try_from(key.prefix_len())?;
            // Not Cidr::new: an IPv4-mapped entry in the v6 trie must be listed as it is.
            set.insert(Cidr::V6 { addr, prefix_len });
        }
        Ok(set)
    }

    fn insert(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        match *cidr {
            Cidr::V4 { addr, prefix_len } => {
                self.v4
                    .insert(&Key::new(u32::from(prefix_len), addr.octets()), PRESENT, 0)
            }
            Cidr::V6 { addr, prefix_len } => {
                self.v6
                    .insert(&Key::new(u32::from(prefix_len), addr.octets()), PRESENT, 0)
            }
        }
        .with_context(|| format!("adding {cidr} to the allowlist"))
    }

    /// Removing an absent prefix is not an error.
    fn remove(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        let result = match *cidr {
            Cidr::V4 { addr, prefix_len } => self
                .v4
                .remove(&Key::new(u32::from(prefix_len), addr.octets())),
            Cidr::V6 { addr, prefix_len } => self
                .v6
                .remove(&Key::new(u32::from(prefix_len), addr.octets())),
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(error).with_context(|| format!("removing {cidr} from the allowlist")),
        }
    }
}

/// The allowlist the program consults: the tries, the fast path's bitmaps and the IPv4 block
/// masks.
pub struct Allowlist {
    tries: AllowlistTries,
    fast_path: FastPath,
    masks: BlockMasks,
}

impl Allowlist {
    /// Opens the tries and maps the bitmaps. Pinned tries may already hold prefixes, and pinned
    /// bitmaps and masks may predate them (or be new): they are derived from the tries here,
    /// before anything is attached.
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        let tries = AllowlistTries::open(source)?;
        let mut levels = Vec::new();
        // Filters first (see `FastPath::new`), the exact full-block level last.
        for (fam, name, block_len, longest, filter, words) in [
            (
                Fam::V4,
                map_names::ALLOW_V4_SUMMARY,
                SUMMARY_PREFIX_LEN,
                u8::MAX,
                true,
                SUMMARY_WORDS,
            ),
            (
                Fam::V4,
                map_names::ALLOW_V4_BLOCKS,
                BLOCK_PREFIX_LEN,
                u8::MAX,
                true,
                BLOCK_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_SUMMARY,
                SUMMARY_PREFIX_LEN,
                u8::MAX,
                true,
                SUMMARY_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_BLOCKS,
                BLOCK_PREFIX_LEN,
                u8::MAX,
                true,
                BLOCK_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_SHORT,
                BLOCK_PREFIX_LEN,
                47,
                true,
                BLOCK_WORDS,
            ),
            (
                Fam::V4,
                map_names::ALLOW_V4_FULL,
                BLOCK_PREFIX_LEN,
                block_masks::BLOCK_LEN,
                false,
                BLOCK_WORDS,
            ),
        ] {
            let map = map_bitmap(source, name, words)?;
            levels.push(LevelMap {
                fam,
                name,
                block_len,
                longest,
                filter,
                map,
            });
        }
        let slash48 = map_bitmap(source, map_names::ALLOW_V6_48, SLASH48_WORDS)?;
        let mut allowlist = Allowlist {
            tries,
            fast_path: FastPath::new(levels, slash48),
            masks: BlockMasks::open(source)?,
        };
        let prefixes = allowlist.block_keys()?;
        allowlist.fast_path.rebuild(&prefixes);
        allowlist.masks.rebuild(v4_prefixes(&prefixes))?;
        Ok(allowlist)
    }

    /// The prefixes in the allowlist, read back from both tries.
    pub fn entries(&self) -> anyhow::Result<BTreeSet<Cidr>> {
        self.tries.read()
    }

    /// Adds one prefix.
    pub fn allow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        // What the program reads first, the trie (the record) last: a set bit or mask with no
        // trie entry yet is only an early allow of a prefix being added, never a lost one; the
        // reverse order could drop an allowlisted source.
        let (fam, addr, len) = block_key(cidr);
        self.fast_path.insert(fam, addr, len);
        let result = self.insert_mask(fam, addr, len).and_then(|()| {
            let inserted = self.tries.insert(cidr);
            if inserted.is_err() {
                self.remove_mask(fam, addr, len)?;
            }
            inserted
        });
        if result.is_err() {
            self.fast_path.remove(fam, addr, len);
        }
        result
    }

    /// Removes one prefix; removing an absent prefix is not an error.
    pub fn disallow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        // The block mask (which decides long IPv4 prefixes) before the trie (the record): if
        // the mask write fails, the trie still lists the prefix, so the next sync tries
        // again; the reverse order could leave an address allowed that no record shows. A
        // block's mask and bits only lose what no remaining prefix covers.
        let (fam, addr, len) = block_key(cidr);
        self.remove_mask(fam, addr, len)?;
        self.tries.remove(cidr)?;
        self.fast_path.remove(fam, addr, len);
        Ok(())
    }

    fn insert_mask(&mut self, fam: Fam, addr: u128, len: u8) -> anyhow::Result<()> {
        match fam {
            Fam::V4 if BlockMasks::takes(len) => self.masks.insert(addr as u32, len),
            _ => Ok(()),
        }
    }

    fn remove_mask(&mut self, fam: Fam, addr: u128, len: u8) -> anyhow::Result<()> {
        match fam {
            Fam::V4 if BlockMasks::takes(len) => self.masks.remove(addr as u32, len),
            _ => Ok(()),
        }
    }

    /// Makes the allowlist exactly `wanted`: adds what is new first, then removes what is gone,
    /// so an address present before and after is never missing in between.
    pub fn sync(&mut self, wanted: &BTreeSet<Cidr>) -> anyhow::Result<AllowlistChange> {
        let current = self.entries()?;
        let change = AllowlistChange {
            added: wanted.difference(&current).copied().collect(),
            removed: current.difference(wanted).copied().collect(),
        };
        for cidr in &change.added {
            self.allow(cidr)?;
        }
        for cidr in &change.removed {
            self.disallow(cidr)?;
        }
        Ok(change)
    }

    /// Turns the fast path on (the default) or off. Off fills the filter bitmaps with ones, so
    /// every protected SYN goes on to the exact structures (the IPv4 full-block bitmap and
    /// block masks, the IPv6 trie): verdicts are the same either way, only the cost differs
    /// (the benchmark measures both).
    pub fn set_fast_path(&mut self, enabled: bool) {
        self.fast_path.set_enabled(enabled);
    }

    /// Checks that the kernel's bitmaps and IPv4 block masks are exactly what the tries'
    /// contents imply (filters all ones when the fast path is off). For tests; reads every
    /// bitmap whole.
    pub fn verify_fast_path(&self) -> anyhow::Result<()> {
        let prefixes = self.block_keys()?;
        self.fast_path.verify(&prefixes)?;
        self.masks.verify(v4_prefixes(&prefixes))
    }

    fn block_keys(&self) -> anyhow::Result<Vec<(Fam, u128, u8)>> {
        Ok(self.entries()?.iter().map(block_key).collect())
    }
}

/// The family, address bits and length of a prefix, as the block bitmaps index them. The IPv6
/// trie may hold an IPv4-mapped prefix (see `AllowlistTries::read`); it goes into the IPv6
/// bitmap with it.
fn block_key(cidr: &Cidr) -> (Fam, u128, u8) {
    match *cidr {
        // Masked, in case a prefix was built by hand with host bits set: the trie ignores them.
        Cidr::V4 { addr, prefix_len } => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            (Fam::V4, u128::from(addr.to_bits() & mask), prefix_len)
        }
        Cidr::V6 { addr, prefix_len } => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            (Fam::V6, addr.to_bits() & mask, prefix_len)
        }
    }
}

/// Maps the bitmap array `name` of `words` words into this process. The mapping keeps the map
/// alive after its fd is closed.
fn map_bitmap(source: &mut MapSource, name: &str, words: u32) -> anyhow::Result<MappedBitmap> {
    match source.open(name)? {
        Map::Array(data) => {
            MappedBitmap::new(data.fd(), words).with_context(|| format!("mapping {name}"))
        }
        _ => Err(anyhow!("map {name} is not an array")),
    }
}

/// The IPv4 prefixes among `prefixes`, as 32-bit addresses.
fn v4_prefixes(prefixes: &[(Fam, u128, u8)]) -> impl Iterator<Item = (u32, u8)> + '_ {
    prefixes
        .iter()
        .filter(|(fam, _, _)| *fam == Fam::V4)
        .map(|&(_, addr, len)| (addr as u32, len))
}

/// What [`Allowlist::sync`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowlistChange {
    pub added: Vec<Cidr>,
    pub removed: Vec<Cidr>,
}

impl AllowlistChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}
