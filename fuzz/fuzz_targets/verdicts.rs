//! Arbitrary bytes as an Ethernet frame, through the loaded XDP program (BPF_PROG_TEST_RUN)
//! and through the reference classifier: any difference in verdict, counters or passed bytes
//! is a crash, reported with the frame as hex for `tests/tests/regressions.rs`.
//!
//! Needs root (it loads the program). Seeds live in `fuzz/seeds/verdicts`.
#![no_main]

use std::sync::{LazyLock, Mutex, PoisonError};

use libfuzzer_sys::fuzz_target;
use test_kit::differential::{Differential, regression_snippet, test_policy};
use verdict_reference::RuleAction;

/// Longest frame fed to the program: a 1500-byte MTU, the Ethernet header and two VLAN tags.
/// BPF_PROG_TEST_RUN refuses XDP input much past a page, and nothing longer reaches XDP on a
/// 1500-byte link.
const MAX_FRAME: usize = 1500 + 14 + 8;

/// One program for the whole run: loading per input would cost the verifier every time.
static DIFFERENTIAL: LazyLock<Mutex<Differential>> = LazyLock::new(|| {
    Mutex::new(
        Differential::new(test_policy(RuleAction::Drop))
            .expect("loading the XDP program (as root)"),
    )
});

fuzz_target!(|data: &[u8]| {
    let frame = &data[..data.len().min(MAX_FRAME)];
    let mut differential = DIFFERENTIAL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(reason) = differential.check(frame, true) {
        panic!(
            "{}",
            regression_snippet(frame, differential.policy(), &reason)
        );
    }
});
