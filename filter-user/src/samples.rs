//! Sampled drop events: the program sends a few denied sources per second per CPU through the
//! `DROP_SAMPLES` ring buffer; the daemon reads them here and tallies them into the pinned
//! `DROPPED_SOURCES` LRU hash (`maps::DroppedSourceMap`), which `mxguard status` reads.

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use filter_common::DropSample;
use tokio::io::unix::AsyncFd;

/// The ring buffer, readable from tokio.
pub struct DropSamples {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl DropSamples {
    /// Takes the ring buffer out of a freshly loaded object (it has one reader: the daemon).
    pub fn open(source: &mut crate::maps::MapSource) -> anyhow::Result<Self> {
        Self::new(source.typed(filter_common::map_names::DROP_SAMPLES)?)
    }

    fn new(ring: RingBuf<MapData>) -> anyhow::Result<Self> {
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
        // AsyncFd (which owns the RingBuf) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|error| anyhow::anyhow!("polling the drop-sample ring buffer: {error}"))?;
        Ok(DropSamples { ring })
    }

    /// Waits for samples and returns all that are there.
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<DropSample>> {
        let mut guard = self
            .ring
            .readable_mut()
            .await
            .context("waiting for drop samples")?;
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<DropSample>() {
                // SAFETY: the program writes whole DropSample values (plain integers) and we
                // checked the length; read_unaligned copes with any alignment.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropSample>()) });
            }
        }
        guard.clear_ready();
        Ok(batch)
    }
}
