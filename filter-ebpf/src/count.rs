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
        Row(COUNTERS.get_ptr_mut(family as u32))
    }

    /// The denied frames counted so far (whatever the action made of them); None without a row.
    #[inline(always)]
    pub fn denials(self) -> Option<u64> {
        let row = self.0?;
        // SAFETY: this CPU's slot of a per-CPU array; XDP runs with preemption off, so no one
        // else writes it meanwhile.
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
        // SAFETY: as in `denials`.
        let row = unsafe { &mut *row };
        row.bump(Counter::Frames);
        if let Some(counter) = counter(outcome, verdict) {
            row.bump(counter);
        }
    }
}

/// The counter for how a frame ended, besides `Frames`.
#[inline(always)]
fn counter(outcome: Outcome, verdict: Verdict) -> Option<Counter> {
    Some(match (outcome, verdict) {
        (_, Verdict::WouldDrop) => Counter::SynWouldDrop,
        (_, Verdict::Rejected) => Counter::SynRejected,
        (Outcome::SynDenied { .. }, _) => Counter::SynDropped,
        (Outcome::EvasiveDenied, _) => Counter::EvasiveDropped,
        (Outcome::Malformed, _) => Counter::Malformed,
        (Outcome::SynAllowed, _) => Counter::SynAllowed,
        (Outcome::Pass, _) => return None,
    })
}
