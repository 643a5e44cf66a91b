//! Is a source allowlisted? The tries decide; the block bitmaps in front of them answer "no"
//! for most sources of a spoofed flood without a trie lookup.

use aya_ebpf::maps::{Array, lpm_trie::Key};
use filter_common::BlockWord;

use crate::maps::{
    ALLOW_V4, ALLOW_V4_BLOCKS, ALLOW_V4_SUMMARY, ALLOW_V6, ALLOW_V6_BLOCKS, ALLOW_V6_SUMMARY,
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
    match source {
        Source::V4(address) => allowlisted_v4(&address),
        Source::V6(address) => match ipv4_mapped(&address) {
            // ::ffff:a.b.c.d is an IPv4 host: judge it by the IPv4 list.
            Some(address) => allowlisted_v4(address),
            None => {
                may_be_allowed(&ALLOW_V6_SUMMARY, &ALLOW_V6_BLOCKS, &address)
                    && ALLOW_V6.get(Key::new(128, address)).is_some()
            }
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
    may_be_allowed(&ALLOW_V4_SUMMARY, &ALLOW_V4_BLOCKS, address)
        && ALLOW_V4.get(Key::new(32, *address)).is_some()
}

/// The fast path: false when no allowlisted prefix touches the /16, then the /24, that
/// `address` falls in (so the trie cannot match); true means "ask the trie". A miss in an
/// untouched block (a random spoofed source) costs one read of a bitmap that stays in cache.
#[inline(always)]
fn may_be_allowed(summary: &Array<BlockWord>, blocks: &Array<BlockWord>, address: &[u8]) -> bool {
    let Some(&[a, b, c]) = address.first_chunk::<3>() else {
        return true;
    };
    // Shifts, not from_be_bytes: LLVM then builds the indexes from the byte loads directly.
    let slash16 = (u32::from(a) << 8) | u32::from(b);
    bit_set(summary, slash16) && bit_set(blocks, (slash16 << 8) | u32::from(c))
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
