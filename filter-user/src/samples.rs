//! Sampled drop events: the program sends a few denied sources per second per CPU through the
//! `DROP_SAMPLES` ring buffer; the daemon tallies them into the pinned `DROPPED_SOURCES` LRU
//! hash, which `mxguard status` reads (daemon running or not).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData, RingBuf};
use filter_common::{DropSample, DroppedSource, Family};
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

/// The key `DROPPED_SOURCES` uses: IPv6, or IPv4-mapped IPv6 for IPv4 sources.
pub fn source_key(sample: &DropSample) -> [u8; 16] {
    if sample.family == Family::Ipv4 as u8 {
        let v4 = Ipv4Addr::new(
            sample.source[0],
            sample.source[1],
            sample.source[2],
            sample.source[3],
        );
        v4.to_ipv6_mapped().octets()
    } else {
        sample.source
    }
}

/// Adds `samples` to the tally in `sources`.
pub fn tally(
    sources: &mut HashMap<MapData, [u8; 16], DroppedSource>,
    samples: &[DropSample],
) -> anyhow::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for sample in samples {
        let key = source_key(sample);
        let mut entry = sources.get(&key, 0).unwrap_or_default();
        entry.samples += 1;
        entry.last_seen_unix_secs = now;
        entry.last_port = sample.port;
        sources
            .insert(key, entry, 0)
            .context("updating DROPPED_SOURCES")?;
    }
    Ok(())
}

/// The `limit` sources sampled most often.
pub fn top_sources(
    sources: &HashMap<MapData, [u8; 16], DroppedSource>,
    limit: usize,
) -> anyhow::Result<Vec<(IpAddr, DroppedSource)>> {
    let mut all = Vec::new();
    for entry in sources.iter() {
        let (key, value) = entry.context("reading DROPPED_SOURCES")?;
        let v6 = Ipv6Addr::from(key);
        let addr = v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6));
        all.push((addr, value));
    }
    all.sort_by(|a, b| b.1.samples.cmp(&a.1.samples).then(a.0.cmp(&b.0)));
    all.truncate(limit);
    Ok(all)
}
