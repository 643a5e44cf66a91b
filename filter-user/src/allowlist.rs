//! The allowlist: both LPM tries and the fast-path bitmaps in front of them, as one type that
//! keeps them in step (bits set before a trie insert, cleared after a trie removal).

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow};
use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use filter_common::{
    AllowEntry, BLOCK_PREFIX_LEN, BLOCK_WORDS, SUMMARY_PREFIX_LEN, SUMMARY_WORDS, map_names,
};

use crate::{
    cidr::Cidr,
    fast_path::{Fam, FastPath, MappedBitmap},
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

/// The allowlist the program consults: the tries and the fast path's bitmaps.
pub struct Allowlist {
    tries: AllowlistTries,
    fast_path: FastPath,
}

impl Allowlist {
    /// Opens the tries and maps the bitmaps. Pinned tries may already hold prefixes, and pinned
    /// bitmaps may predate them (or be new): the bitmaps are derived from the tries here,
    /// before anything is attached.
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        let tries = AllowlistTries::open(source)?;
        let mut levels = Vec::new();
        for (fam, name, block_len, words) in [
            (
                Fam::V4,
                map_names::ALLOW_V4_SUMMARY,
                SUMMARY_PREFIX_LEN,
                SUMMARY_WORDS,
            ),
            (
                Fam::V4,
                map_names::ALLOW_V4_BLOCKS,
                BLOCK_PREFIX_LEN,
                BLOCK_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_SUMMARY,
                SUMMARY_PREFIX_LEN,
                SUMMARY_WORDS,
            ),
            (
                Fam::V6,
                map_names::ALLOW_V6_BLOCKS,
                BLOCK_PREFIX_LEN,
                BLOCK_WORDS,
            ),
        ] {
            // The mapping keeps the map alive after its fd is closed here.
            let bitmap = match source.open(name)? {
                Map::Array(data) => MappedBitmap::new(data.fd(), words)
                    .with_context(|| format!("mapping {name}"))?,
                _ => return Err(anyhow!("map {name} is not an array")),
            };
            levels.push((fam, name, block_len, bitmap));
        }
        let mut allowlist = Allowlist {
            tries,
            fast_path: FastPath::new(levels),
        };
        let prefixes = allowlist.block_keys()?;
        allowlist.fast_path.rebuild(&prefixes);
        Ok(allowlist)
    }

    /// The prefixes in the allowlist, read back from both tries.
    pub fn entries(&self) -> anyhow::Result<BTreeSet<Cidr>> {
        self.tries.read()
    }

    /// Adds one prefix.
    pub fn allow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        // Bits first: a set bit with no trie entry yet is only a slower miss, never a verdict
        // change; the reverse order could drop an allowlisted source.
        let (fam, addr, len) = block_key(cidr);
        self.fast_path.insert(fam, addr, len);
        let result = self.tries.insert(cidr);
        if result.is_err() {
            self.fast_path.remove(fam, addr, len);
        }
        result
    }

    /// Removes one prefix; removing an absent prefix is not an error.
    pub fn disallow(&mut self, cidr: &Cidr) -> anyhow::Result<()> {
        self.tries.remove(cidr)?;
        // Bits after the trie: they are cleared only once no prefix touches their block.
        let (fam, addr, len) = block_key(cidr);
        self.fast_path.remove(fam, addr, len);
        Ok(())
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

    /// Turns the fast path on (the default) or off. Off fills the kernel bitmaps with ones, so
    /// every protected SYN costs a trie lookup: verdicts are the same either way, only the cost
    /// differs (the benchmark measures both).
    pub fn set_fast_path(&mut self, enabled: bool) {
        self.fast_path.set_enabled(enabled);
    }

    /// Checks that the kernel's bitmaps are exactly what the tries' contents imply (all ones
    /// when the fast path is off). For tests; reads every bitmap whole.
    pub fn verify_fast_path(&self) -> anyhow::Result<()> {
        self.fast_path.verify(&self.block_keys()?)
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
