//! The Internet checksum (RFC 1071), for the headers of a RST.

/// A one's-complement sum of big-endian 16-bit words.
#[derive(Clone, Copy, Default)]
pub struct Checksum(u32);

impl Checksum {
    /// Starts from a sum of small numbers (the pseudo-header's protocol and length).
    #[inline(always)]
    pub fn starting_at(sum: u32) -> Self {
        Checksum(sum)
    }

    /// Adds `bytes` (an even number of them) as 16-bit words.
    #[inline(always)]
    pub fn add(mut self, bytes: &[u8]) -> Self {
        for word in bytes.chunks_exact(2) {
            self.0 += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        self
    }

    /// The checksum field's value, in network byte order.
    #[inline(always)]
    pub fn finish(self) -> [u8; 2] {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        (!(sum as u16)).to_be_bytes()
    }
}
