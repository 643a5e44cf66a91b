//! The counters: every frame bumps `Frames` and at most one other counter of its family's row
//! on this CPU (`filter_common::Counter`).

use filter_common::{Counter, Family, FamilyCounters};

use crate::{Verdict, judge::Outcome, maps::COUNTERS};

/// This CPU's counter row for one family, looked up once per frame: the sampling gate reads it
/// and the count writes it.
#[derive(Clone, Copy)]
pub struct Row(Option<*mut FamilyCounters>);

impl Row {
    #[inline(always)]
    pub fn of(family: Family) -> Self {
        if cfg!(feature = "off-count") {
            return Row(None);
        }
        Row(COUNTERS.get_ptr_mut(family as u32))
    }

    /// The denied frames counted so far (whatever the action made of them); None without a row.
    #[inline(always)]
    pub fn denials(self) -> Option<u64> {
        let row = self.0?;
        // SAFETY: this CPU's per-CPU slot; XDP runs with preemption off, so no one else writes it.
        let row = unsafe { &*row };
        Some(
            Counter::DENIALS
                .iter()
                .map(|counter| row.get(*counter))
                .sum(),
        )
    }

    /// Counts a frame that ended as `outcome` and `verdict`.
    #[inline(always)]
    pub fn count(self, outcome: Outcome, verdict: Verdict) {
        let Some(row) = self.0 else {
            return;
        };
        // SAFETY: this CPU's per-CPU slot; XDP runs with preemption off, so no one else writes it.
        let row = unsafe { &mut *row };
        row.bump(Counter::Frames);
        // One arm per counter, each a store at a fixed offset.
        match (outcome, verdict) {
            (_, Verdict::WouldDrop) => row.bump(Counter::SynWouldDrop),
            (_, Verdict::Rejected) => row.bump(Counter::SynRejected),
            (Outcome::SynDenied { .. }, _) => row.bump(Counter::SynDropped),
            (Outcome::EvasiveDenied, _) => row.bump(Counter::EvasiveDropped),
            (Outcome::Malformed, _) => row.bump(Counter::Malformed),
            (Outcome::SynAllowed, _) => row.bump(Counter::SynAllowed),
            (Outcome::Pass, _) => {}
        }
    }
}
