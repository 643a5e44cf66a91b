//! The IPv4 block masks (`ALLOW_V4_MASKS`): for each /24 block that allowlisted prefixes
//! of /25 to /32 touch, the 256-bit mask of the addresses they cover. With the bitmap of blocks
//! covered whole (prefixes up to /24, kept by `fast_path`) the program decides any IPv4 source
//! with one hash lookup instead of an LPM trie walk. Derived from the IPv4 trie, like the
//! bitmaps, and rebuilt from it at every load.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use filter_common::BlockMask;

use crate::maps::MapSource;

/// Prefixes longer than this go in the masks; shorter ones cover whole blocks.
pub const BLOCK_LEN: u8 = 24;

/// The block index of an address: its top 24 bits, as the program computes it.
fn block_of(addr: u32) -> u32 {
    addr >> 8
}

/// The mask of `block` implied by `prefixes` (all longer than /24).
fn mask_of(prefixes: &BTreeSet<(u32, u8)>, block: u32) -> BlockMask {
    let mut mask = BlockMask::default();
    let first = block << 8;
    for &(addr, len) in prefixes.range((first, 0)..=(first | 0xff, u8::MAX)) {
        let start = addr & 0xff;
        let count = 1u32 << (32 - u32::from(len));
        for host in start..start + count {
            mask[(host / 64) as usize] |= 1 << (host % 64);
        }
    }
    mask
}

/// The masks of every block `prefixes` touch.
fn masks_of(prefixes: &BTreeSet<(u32, u8)>) -> BTreeMap<u32, BlockMask> {
    let blocks: BTreeSet<u32> = prefixes.iter().map(|&(addr, _)| block_of(addr)).collect();
    blocks
        .into_iter()
        .map(|block| (block, mask_of(prefixes, block)))
        .collect()
}

/// The userspace copy of the long IPv4 prefixes and the kernel map of their masks.
pub struct BlockMasks {
    /// (address with host bits clear, length), lengths 25 to 32.
    prefixes: BTreeSet<(u32, u8)>,
    map: HashMap<MapData, u32, BlockMask>,
}

impl BlockMasks {
    pub fn open(source: &mut MapSource) -> anyhow::Result<Self> {
        Ok(BlockMasks {
            prefixes: BTreeSet::new(),
            map: source.typed(filter_common::map_names::ALLOW_V4_MASKS)?,
        })
    }

    /// Whether a prefix of this length goes in the masks.
    pub fn takes(len: u8) -> bool {
        len > BLOCK_LEN
    }

    /// Adds a prefix (host bits clear, longer than /24): its block's mask is replaced whole by
    /// one that also has the new addresses, so no address allowed before is ever missing.
    pub fn insert(&mut self, addr: u32, len: u8) -> anyhow::Result<()> {
        if !self.prefixes.insert((addr, len)) {
            return Ok(());
        }
        let result = self.store(block_of(addr));
        if result.is_err() {
            self.prefixes.remove(&(addr, len));
        }
        result
    }

    /// Removes a prefix; the block's entry goes when no long prefix is left in it.
    pub fn remove(&mut self, addr: u32, len: u8) -> anyhow::Result<()> {
        if !self.prefixes.remove(&(addr, len)) {
            return Ok(());
        }
        let result = self.store(block_of(addr));
        if result.is_err() {
            // The map still holds the old mask: keep the record, so a retry writes it again.
            self.prefixes.insert((addr, len));
        }
        result
    }

    /// Writes the mask of `block` as the prefixes now imply it (deletes it when empty).
    fn store(&mut self, block: u32) -> anyhow::Result<()> {
        let mask = mask_of(&self.prefixes, block);
        if mask == BlockMask::default() {
            match self.map.remove(&block) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(error) => Err(error),
            }
        } else {
            self.map.insert(block, mask, 0)
        }
        .with_context(|| format!("writing the IPv4 block mask of {}", block_label(block)))
    }

    /// Makes the kernel map exactly what `prefixes` imply (at load: pinned masks may be stale
    /// or missing). New masks are written before stale blocks are deleted.
    pub fn rebuild(&mut self, prefixes: impl IntoIterator<Item = (u32, u8)>) -> anyhow::Result<()> {
        self.prefixes = prefixes
            .into_iter()
            .filter(|&(_, len)| Self::takes(len))
            .collect();
        let wanted = masks_of(&self.prefixes);
        for (block, mask) in &wanted {
            self.map.insert(block, mask, 0).with_context(|| {
                format!("writing the IPv4 block mask of {}", block_label(*block))
            })?;
        }
        let stale: Vec<u32> = self
            .kernel_blocks()?
            .into_iter()
            .filter(|block| !wanted.contains_key(block))
            .collect();
        for block in stale {
            self.map.remove(&block).with_context(|| {
                format!("removing the stale block mask of {}", block_label(block))
            })?;
        }
        Ok(())
    }

    fn kernel_blocks(&self) -> anyhow::Result<Vec<u32>> {
        self.map
            .keys()
            .collect::<Result<_, _>>()
            .context("reading ALLOW_V4_MASKS")
    }

    /// Checks the kernel map against `prefixes` (the IPv4 trie's contents). For tests.
    pub fn verify(&self, prefixes: impl IntoIterator<Item = (u32, u8)>) -> anyhow::Result<()> {
        let long: BTreeSet<(u32, u8)> = prefixes
            .into_iter()
            .filter(|&(_, len)| Self::takes(len))
            .collect();
        let wanted = masks_of(&long);
        let mut got = BTreeMap::new();
        for block in self.kernel_blocks()? {
            let mask = self
                .map
                .get(&block, 0)
                .with_context(|| format!("reading the mask of {}", block_label(block)))?;
            got.insert(block, mask);
        }
        if got != wanted {
            let differing: Vec<String> = wanted
                .keys()
                .chain(got.keys())
                .filter(|block| wanted.get(block) != got.get(block))
                .map(|block| block_label(*block))
                .collect();
            anyhow::bail!("ALLOW_V4_MASKS differs from the allowlist in {differing:?}");
        }
        Ok(())
    }
}

fn block_label(block: u32) -> String {
    format!("{}/24", std::net::Ipv4Addr::from_bits(block << 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str) -> u32 {
        text.parse::<std::net::Ipv4Addr>().unwrap().to_bits()
    }

    fn has(mask: &BlockMask, last: u32) -> bool {
        mask[(last / 64) as usize] >> (last % 64) & 1 != 0
    }

    #[test]
    fn hosts_and_long_prefixes_set_their_addresses_only() {
        let prefixes = BTreeSet::from([
            (v4("198.51.100.7"), 32),
            (v4("198.51.100.64"), 26),
            (v4("198.51.100.254"), 31),
        ]);
        let mask = mask_of(&prefixes, block_of(v4("198.51.100.0")));
        let allowed: Vec<u32> = (0..256).filter(|&last| has(&mask, last)).collect();
        let mut expected = vec![7];
        expected.extend(64..128);
        expected.extend([254, 255]);
        assert_eq!(allowed, expected);
        assert_eq!(
            mask_of(&prefixes, block_of(v4("198.51.101.0"))),
            BlockMask::default()
        );
    }

    #[test]
    fn a_slash_25_fills_half_a_block_and_blocks_stay_apart() {
        let prefixes = BTreeSet::from([(v4("203.0.113.128"), 25), (v4("203.0.114.0"), 32)]);
        let masks = masks_of(&prefixes);
        assert_eq!(masks.len(), 2);
        assert_eq!(
            masks[&block_of(v4("203.0.113.0"))],
            [0, 0, u64::MAX, u64::MAX]
        );
        assert_eq!(masks[&block_of(v4("203.0.114.0"))], [1, 0, 0, 0]);
    }

    #[test]
    fn only_prefixes_longer_than_the_block_go_in() {
        assert!(BlockMasks::takes(25) && BlockMasks::takes(32));
        assert!(!BlockMasks::takes(24) && !BlockMasks::takes(0));
    }
}
