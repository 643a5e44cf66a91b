//! Is a source allowlisted? The block bitmaps answer "no" for most sources of a spoofed flood
//! with one or two array reads. Past them, IPv4 is decided exactly per /24 block (a bitmap of
//! blocks covered whole, then one hash lookup of the block's address mask); IPv6 by its trie,
//! behind a hashed /48 filter in blocks without prefixes shorter than /48.

use aya_ebpf::maps::{Array, lpm_trie::Key};
use filter_common::{BlockWord, slash48_bit};

use crate::maps::{
    ALLOW_V4_BLOCKS, ALLOW_V4_FULL, ALLOW_V4_MASKS, ALLOW_V4_SUMMARY, ALLOW_V6, ALLOW_V6_48,
    ALLOW_V6_BLOCKS, ALLOW_V6_SHORT, ALLOW_V6_SUMMARY,
};

/// A source address, copied out of the frame: the mapped-address test and the trie key then
/// read it with word loads from the stack, where packet bytes cost one load each (measured
/// faster on IPv6 floods), and the verifier has fewer packet pointers to tell paths apart by.
#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[inline(always)]
pub fn allowlisted(source: Source) -> bool {
    if cfg!(feature = "off-allowlist") {
        return false;
    }
    match source {
        Source::V4(address) => allowlisted_v4(&address),
        Source::V6(address) => match ipv4_mapped(&address) {
            // ::ffff:a.b.c.d is an IPv4 host: judge it by the IPv4 list.
            Some(address) => allowlisted_v4(address),
            None => allowlisted_v6(&address),
        },
    }
}

/// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
fn ipv4_mapped(address: &[u8; 16]) -> Option<&[u8; 4]> {
    match address {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ipv4 @ ..] => Some(ipv4),
        _ => None,
    }
}

#[inline(always)]
fn allowlisted_v4(address: &[u8; 4]) -> bool {
    let [a, b, c, d] = *address;
    let slash16 = (u32::from(a) << 8) | u32::from(b);
    let block = (slash16 << 8) | u32::from(c);
    if !bit_set(&ALLOW_V4_SUMMARY, slash16) || !bit_set(&ALLOW_V4_BLOCKS, block) {
        return false;
    }
    // Exact from here: a failed read answers "not allowed", as an absent entry does.
    if matches!(ALLOW_V4_FULL.get(block >> 6), Some(word) if (word >> (block & 63)) & 1 != 0) {
        return true;
    }
    // SAFETY: the map is BPF_F_NO_PREALLOC, so the value read is never reused while we read it;
    // userspace replaces a mask whole (a new element), so it is the old or the new one.
    match unsafe { ALLOW_V4_MASKS.get(block) } {
        Some(mask) => (mask[usize::from(d >> 6)] >> (d & 63)) & 1 != 0,
        None => false,
    }
}

/// The IPv6 fast path, then the trie. False when no allowlisted prefix touches the /16, then the
/// /24, that `address` falls in: a miss in an untouched block (a random spoofed source) costs
/// one read of a bitmap that stays in cache. In a touched block with no prefix shorter than
/// /48, the /48 filter answers most near misses (a source in a relay's /24 but in none of its
/// /48s) before the trie walk.
#[inline(always)]
fn allowlisted_v6(address: &[u8; 16]) -> bool {
    let [a, b, c, d, e, f, ..] = *address;
    // Shifts, not from_be_bytes: LLVM then builds the indexes from the byte loads directly.
    let slash16 = (u32::from(a) << 8) | u32::from(b);
    let block = (slash16 << 8) | u32::from(c);
    if !bit_set(&ALLOW_V6_SUMMARY, slash16) || !bit_set(&ALLOW_V6_BLOCKS, block) {
        return false;
    }
    if !bit_set(&ALLOW_V6_SHORT, block) {
        let top48 =
            (u64::from(block) << 24) | (u64::from(d) << 16) | (u64::from(e) << 8) | u64::from(f);
        if !bit_set(&ALLOW_V6_48, slash48_bit(top48)) {
            return false;
        }
    }
    ALLOW_V6.get(Key::new(128, *address)).is_some()
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
