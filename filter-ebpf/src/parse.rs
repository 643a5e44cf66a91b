//! Header parsing: a cursor moves through the frame one header at a time. Each step checks that
//! its header lies inside the frame (the verifier insists) and inside what the layers below say
//! the packet holds, moves the cursor past it and hands it back; fields are read by name.

use core::{
    hint::black_box,
    mem::{align_of, size_of},
};

use aya_ebpf::programs::XdpContext;
use filter_common::MAX_VLAN_TAGS;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// A header laid out as on the wire. Implemented only by this module's structs, which hold
/// bytes and byte arrays alone: alignment 1 (headers sit at any address) and every bit pattern
/// is a valid value, so a bounds check is all a read needs.
pub trait Header: Sized {}

/// The frame the program was handed, `data` to `data_end`. Not `Copy`: rewriting it needs
/// `&mut`, so no header read from it stays in use across a rewrite.
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// The header `offset` bytes into the frame, if it lies inside the frame.
    #[inline(always)]
    pub fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        const { assert!(align_of::<T>() == 1) };
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: inside [data, data_end) as checked above; T has alignment 1, any bits valid.
        Some(unsafe { &*(at as *const T) })
    }

    /// The header `offset` bytes into the frame, for rewriting, if it lies inside the frame.
    #[inline(always)]
    pub fn header_mut<T: Header>(&mut self, offset: usize) -> Option<&mut T> {
        const { assert!(align_of::<T>() == 1) };
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: as in `header`, and `&mut self` keeps every other view of the frame unused.
        Some(unsafe { &mut *(at as *mut T) })
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A cursor at the first byte of the frame.
    #[inline(always)]
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            offset: 0,
            limit: usize::MAX,
            frame: self,
        }
    }
}

/// Where parsing stands in a frame. Positions are offsets from the frame's start, not packet
/// pointers: the verifier can take as one the paths through the IPv6 walk that differ only in a
/// scalar, which keeps it well inside its budget.
pub struct Cursor<'a> {
    /// Where the next header starts.
    offset: usize,
    /// End of the IP datagram, once its header is read: bytes past it (Ethernet padding, an
    /// attacker's trailer) are never read, because the kernel trims them away before anyone else
    /// looks. Until then `usize::MAX`, leaving the frame's end, checked anyway, as the only bound.
    limit: usize,
    frame: &'a Frame,
}

impl<'a> Cursor<'a> {
    /// Offset of the next header from the frame's start.
    #[inline(always)]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The next header, if it lies inside the limit; the cursor moves past it.
    #[inline(always)]
    pub fn take<T: Header>(&mut self) -> Option<&'a T> {
        let header = self.peek::<T>()?;
        self.offset += size_of::<T>();
        Some(header)
    }

    /// The next header, if it lies inside the limit; the cursor stays.
    #[inline(always)]
    pub fn peek<T: Header>(&self) -> Option<&'a T> {
        if self.offset + size_of::<T>() > self.limit {
            return None;
        }
        self.frame.header(self.offset)
    }

    /// Do `len` bytes from the cursor lie inside the limit?
    #[inline(always)]
    fn fits(&self, len: usize) -> bool {
        self.offset + len <= self.limit
    }

    /// Moves on `len` bytes; false when that passes the limit.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) -> bool {
        self.offset += len;
        self.offset <= self.limit
    }

    /// Bytes from `offset` to the frame's end (`offset` lies inside the frame).
    #[inline(always)]
    fn frame_bytes_from(&self, offset: usize) -> usize {
        self.frame.len() - offset
    }

    /// Limits the cursor to the datagram ending at `limit`, which the caller checked lies inside
    /// the frame.
    #[inline(always)]
    fn limit_to(&mut self, limit: usize) {
        // Opaque to LLVM: knowing the limit lies inside the frame, it would drop each read's
        // check against `data_end` as implied by the check against the limit, and the verifier,
        // which only trusts comparisons with `data_end`, would reject the read.
        self.limit = black_box(limit);
    }
}

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    ether_type: [u8; 2],
}

impl Header for EthHdr {}

#[repr(C)]
pub struct VlanHdr {
    tci: [u8; 2],
    ether_type: [u8; 2],
}

impl Header for VlanHdr {}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD
}

/// Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags in any order; returns the
/// ethertype after them (still a VLAN one when one tag more follows). None: the frame ends
/// inside them.
#[inline(always)]
pub fn ethernet(cursor: &mut Cursor) -> Option<u16> {
    let mut ether_type = u16::from_be_bytes(cursor.take::<EthHdr>()?.ether_type);
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        ether_type = u16::from_be_bytes(cursor.take::<VlanHdr>()?.ether_type);
    }
    Some(ether_type)
}

/// The IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub flags_fragment_offset: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Header for Ipv4Hdr {}

impl Ipv4Hdr {
    pub const VERSION_IHL_NO_OPTIONS: u8 = 0x45;
    /// Don't fragment, in the high byte of the flags and fragment offset.
    pub const DONT_FRAGMENT: [u8; 2] = [0x40, 0];
    const MORE_FRAGMENTS: u16 = 0x2000;
    const FRAGMENT_OFFSET: u16 = 0x1fff;

    #[inline(always)]
    fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length with options, in bytes (IHL × 4).
    #[inline(always)]
    fn header_len(&self) -> usize {
        usize::from(self.version_ihl & 0x0f) * 4
    }

    #[inline(always)]
    pub fn total_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.total_len))
    }

    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        u16::from_be_bytes(self.flags_fragment_offset) & Self::MORE_FRAGMENTS != 0
    }

    /// In 8-byte units.
    #[inline(always)]
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes(self.flags_fragment_offset) & Self::FRAGMENT_OFFSET
    }
}

/// The IPv4 header, when sane (version 4, IHL ≥ 5, a total length from the header's length up
/// to the frame's end): the cursor moves past the options and is limited to the datagram.
/// None: malformed.
#[inline(always)]
pub fn ipv4<'a>(cursor: &mut Cursor<'a>) -> Option<&'a Ipv4Hdr> {
    let start = cursor.offset;
    let ip = cursor.take::<Ipv4Hdr>()?;
    let header_len = ip.header_len();
    if ip.version() != 4 || header_len < size_of::<Ipv4Hdr>() {
        return None;
    }
    let total_len = ip.total_len();
    if total_len < header_len || total_len > cursor.frame_bytes_from(start) {
        return None;
    }
    cursor.offset = start + header_len;
    cursor.limit_to(start + total_len);
    Some(ip)
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

impl Header for Ipv6Hdr {}

impl Ipv6Hdr {
    /// Version 6, traffic class and flow label 0.
    pub const VERSION_CLASS_FLOW: [u8; 4] = [0x60, 0, 0, 0];

    #[inline(always)]
    fn version(&self) -> u8 {
        self.version_class_flow[0] >> 4
    }

    #[inline(always)]
    pub fn payload_len(&self) -> usize {
        usize::from(u16::from_be_bytes(self.payload_len))
    }
}

/// The IPv6 header, when sane (version 6, payload inside the frame): the cursor moves past it
/// and is limited to the payload. None: malformed.
#[inline(always)]
pub fn ipv6<'a>(cursor: &mut Cursor<'a>) -> Option<&'a Ipv6Hdr> {
    let ip = cursor.take::<Ipv6Hdr>()?;
    if ip.version() != 6 {
        return None;
    }
    let payload_end = cursor.offset + ip.payload_len();
    if payload_end > cursor.frame_bytes_from(0) {
        return None;
    }
    cursor.limit_to(payload_end);
    Some(ip)
}

/// The first 4 bytes of an IPv6 extension header: all the walk reads of it. Copied out whole
/// (it is all fields the walk needs): a packet pointer kept across the walk's branches would
/// tell apart, for the verifier, paths it can otherwise take as one.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    /// The header's length: in 8-byte units after the first 8 (4-byte units for AH);
    /// reserved in a fragment header.
    len: u8,
    /// In a fragment header, the offset (top 13 bits, in 8-byte units) and the M flag (lowest
    /// bit), RFC 8200; options or data in the others.
    offset_flags: [u8; 2],
}

impl Header for Ipv6ExtHdr {}

impl Ipv6ExtHdr {
    /// Fragment offset in 8-byte units (in a fragment header).
    #[inline(always)]
    pub fn fragment_offset(&self) -> u16 {
        u16::from_be_bytes(self.offset_flags) >> 3
    }

    /// The M flag (in a fragment header).
    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.offset_flags[1] & 1 != 0
    }
}

const IPV6_FRAGMENT_HDR_LEN: usize = 8;

/// What one step along the IPv6 header chain found.
pub enum Extension {
    /// `next_header` is no extension header: the chain ends here.
    End,
    /// The header does not fit in the payload (its first 4 bytes, or a fragment header's 8);
    /// it was not interpreted.
    Truncated,
    /// An extension header that fits as far as it has to be read; `len` is its whole length,
    /// which `Cursor::skip` steps over.
    Header {
        header: Ipv6ExtHdr,
        is_fragment: bool,
        len: usize,
    },
}

/// Is `next_header` one of the extension headers the walk steps over?
#[inline(always)]
pub fn is_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AH | IPV6_FRAGMENT
    )
}

/// One step along the IPv6 header chain: the extension header `next_header` names, if any.
/// The cursor stays on it; `Cursor::skip` moves past it.
#[inline(always)]
pub fn ipv6_extension(cursor: &Cursor, next_header: u8) -> Extension {
    if !is_extension(next_header) {
        return Extension::End;
    }
    let Some(&header) = cursor.peek::<Ipv6ExtHdr>() else {
        return Extension::Truncated;
    };
    let (is_fragment, len) = match next_header {
        IPV6_FRAGMENT => {
            // A fragment header cut short is not read: the chain is truncated as it stands
            // before this header.
            if !cursor.fits(IPV6_FRAGMENT_HDR_LEN) {
                return Extension::Truncated;
            }
            (true, IPV6_FRAGMENT_HDR_LEN)
        }
        IPV6_AH => (false, (usize::from(header.len) + 2) * 4),
        _ => (false, (usize::from(header.len) + 1) * 8),
    };
    Extension::Header {
        header,
        is_fragment,
        len,
    }
}

/// The TCP header up to the ports: all a tiny first fragment may hold.
#[repr(C)]
pub struct TcpPorts {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

impl Header for TcpPorts {}

impl TcpPorts {
    #[inline(always)]
    pub fn dest_port(&self) -> u16 {
        u16::from_be_bytes(self.dest)
    }
}

/// The TCP header up to the flags: what judging a segment reads.
#[repr(C)]
pub struct TcpHead {
    pub ports: TcpPorts,
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    /// Data offset (header length in 4-byte words) in the high nibble.
    pub data_offset: u8,
    pub flags: u8,
}

impl Header for TcpHead {}

impl TcpHead {
    pub const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    /// A connection request: SYN set, ACK clear, whatever else is set.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.flags & Self::SYN != 0 && self.flags & Self::ACK == 0
    }

    /// Header length with options, in bytes.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset >> 4) * 4
    }
}

/// The TCP header without options.
#[repr(C)]
pub struct TcpHdr {
    pub head: TcpHead,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urgent: [u8; 2],
}

impl Header for TcpHdr {}
