//! Drop samples: a few denied sources per second per CPU go to userspace through a ring buffer;
//! under a flood the rest cost one mask of counters already in cache.

use filter_common::{
    DROP_SAMPLES_PER_CPU_PER_SEC, DropSample, Family, RATE_SLOT_SAMPLES, SAMPLE_KIND_EVASIVE,
    SAMPLE_KIND_SYN,
};

use crate::{
    count::Row,
    judge::{Judgement, Outcome},
    maps::DROP_SAMPLES,
    parse::{Frame, Ipv4Hdr, Ipv6Hdr, TcpPorts},
    rate_limit::within_rate,
};

/// Denied frames per CPU and family between two looks at the sampling clock (a power of two).
const SAMPLE_EVERY: u64 = 64;

/// Samples a denied frame, before any rewrite of its headers.
#[inline(always)]
pub fn sample(frame: &Frame, judgement: &Judgement, row: Row) {
    if cfg!(feature = "off-sample") {
        return;
    }
    // Only every SAMPLE_EVERY-th denied frame of this CPU and family (the first included) even
    // looks at the clock.
    if row
        .denials()
        .is_some_and(|denied| denied & (SAMPLE_EVERY - 1) != 0)
    {
        return;
    }
    if !within_rate(RATE_SLOT_SAMPLES, DROP_SAMPLES_PER_CPU_PER_SEC) {
        return;
    }
    let mut event = DropSample {
        family: judgement.family as u8,
        ..DropSample::default()
    };
    match judgement.family {
        Family::Ipv4 => match frame.header::<Ipv4Hdr>(judgement.ip) {
            Some(ip) => event.source[..4].copy_from_slice(&ip.saddr),
            None => return,
        },
        Family::Ipv6 => match frame.header::<Ipv6Hdr>(judgement.ip) {
            Some(ip) => event.source = ip.saddr,
            None => return,
        },
        Family::Other => return,
    }
    match judgement.outcome {
        Outcome::SynDenied { tcp } => {
            event.kind = SAMPLE_KIND_SYN;
            if let Some(ports) = frame.header::<TcpPorts>(tcp) {
                event.port = ports.dest_port();
            }
        }
        _ => event.kind = SAMPLE_KIND_EVASIVE,
    }
    // A full ring (no reader) just loses the sample.
    let _ = DROP_SAMPLES.output::<DropSample>(&event, 0);
}
