//! The milter's counters: per verdict (accepted, exempt, missing, forged) and per connection
//! event. They count in the daemon (atomics, Prometheus as they happen) and are written to
//! `STATE_DIR/milter-stats.json` every few seconds for `mxguard status`, which runs in
//! another process.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::Verdict;

/// The counters as numbers (the JSON `status` prints and the file holds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilterCounts {
    pub accepted: u64,
    pub exempt: u64,
    pub missing: u64,
    pub forged: u64,
    /// Milter connections from the MTA (one per SMTP session with Postfix).
    pub connections: u64,
    /// Connections closed at once because --milter-max-connections were open.
    pub connections_refused: u64,
    /// Connections that ended on a protocol or I/O error (garbage, oversized packets, a peer
    /// that vanished mid-packet).
    pub connection_errors: u64,
}

impl MilterCounts {
    /// `milter accepted=N exempt=N missing=N forged=N ...`, for the periodic log line.
    pub fn summary(&self) -> String {
        format!(
            "milter accepted={} exempt={} missing={} forged={} connections={} refused={} errors={}",
            self.accepted,
            self.exempt,
            self.missing,
            self.forged,
            self.connections,
            self.connections_refused,
            self.connection_errors
        )
    }
}

/// The live counters, shared by every connection.
#[derive(Debug, Default)]
pub struct MilterStats {
    accepted: AtomicU64,
    exempt: AtomicU64,
    missing: AtomicU64,
    forged: AtomicU64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    connection_errors: AtomicU64,
}

/// A connection event.
#[derive(Clone, Copy, Debug)]
pub enum ConnectionEvent {
    Opened,
    Refused,
    Error,
}

impl MilterStats {
    pub fn count_verdict(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Accepted => &self.accepted,
            Verdict::Exempt(_) => &self.exempt,
            Verdict::Missing(_) => &self.missing,
            Verdict::Forged { .. } => &self.forged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mxguard_milter_verdicts_total", "verdict" => verdict.name())
            .increment(1);
    }

    pub fn count_connection(&self, event: ConnectionEvent) {
        let (counter, label) = match event {
            ConnectionEvent::Opened => (&self.connections, "opened"),
            ConnectionEvent::Refused => (&self.connections_refused, "refused"),
            ConnectionEvent::Error => (&self.connection_errors, "error"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("mxguard_milter_connections_total", "event" => label).increment(1);
    }

    pub fn counts(&self) -> MilterCounts {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MilterCounts {
            accepted: get(&self.accepted),
            exempt: get(&self.exempt),
            missing: get(&self.missing),
            forged: get(&self.forged),
            connections: get(&self.connections),
            connections_refused: get(&self.connections_refused),
            connection_errors: get(&self.connection_errors),
        }
    }
}

/// What the daemon writes for `status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MilterStatus {
    pub endpoint: String,
    pub pid: u32,
    pub updated_unix_secs: u64,
    #[serde(flatten)]
    pub counts: MilterCounts,
}

pub const STATS_FILE: &str = "milter-stats.json";

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATS_FILE)
}

/// Writes the file atomically (a reader never sees half of it).
pub fn write(state_dir: &Path, status: &MilterStatus) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let target = path(state_dir);
    let temporary = state_dir.join(crate::temporary::unique_name(STATS_FILE));
    let text = serde_json::to_string(status).context("encoding the milter counters")?;
    std::fs::write(&temporary, text)
        .with_context(|| format!("writing {}", temporary.display()))
        .and_then(|()| {
            std::fs::rename(&temporary, &target)
                .with_context(|| format!("renaming to {}", target.display()))
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
}

/// The last counters a daemon wrote under `state_dir`, if any.
pub fn read(state_dir: &Path) -> Option<MilterStatus> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("mxguard-milter-stats-{}", std::process::id()));
        let stats = MilterStats::default();
        stats.count_verdict(&Verdict::Accepted);
        stats.count_verdict(&Verdict::Forged { repeated: None });
        stats.count_connection(ConnectionEvent::Opened);
        let status = MilterStatus {
            endpoint: "inet:127.0.0.1:9900".into(),
            pid: 1,
            updated_unix_secs: 2,
            counts: stats.counts(),
        };
        write(&dir, &status).unwrap();
        assert_eq!(read(&dir), Some(status.clone()));
        assert_eq!(status.counts.accepted, 1);
        assert_eq!(status.counts.forged, 1);
        assert!(
            status
                .counts
                .summary()
                .starts_with("milter accepted=1 exempt=0 missing=0 forged=1")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read(&dir), None);
    }
}
