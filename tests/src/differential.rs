//! Runs frames through the loaded XDP program (BPF_PROG_TEST_RUN) and through the reference
//! classifier (`filter_user::reference`), and reports any difference: verdict, counter row and
//! counter, and the bytes of a passed frame.

use std::{collections::BTreeSet, fmt::Write as _};

use anyhow::Context as _;
use aya::programs::{TestRun, TestRunOptions};
use filter_common::Family;
use filter_user::{
    cidr::Cidr,
    filter::{Counters, Filter},
    reference::{self, Counter, Policy, Rule, RuleAction, Verdict},
};

use crate::harness::{XDP_DROP, XDP_PASS};

/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header (EINVAL), so frames
/// under this length are judged by the reference alone.
pub const MIN_TEST_RUN_LEN: usize = 14;

/// The program's answer for one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRun {
    pub return_value: u32,
    pub output: Vec<u8>,
}

/// A loaded program and the policy it was configured with.
pub struct Differential {
    filter: Filter,
    policy: Policy,
    /// Counters after the last frame whose counters were checked.
    counters: Counters,
    /// Reference tally of frames run since `counters` was read.
    pending: Counters,
}

impl Differential {
    /// Loads the program and configures it with `policy`. Each instance has its own maps, so
    /// tests running in parallel threads do not see each other's counters.
    pub fn new(policy: Policy) -> anyhow::Result<Self> {
        crate::harness::require_root();
        let mut filter = Filter::load()?;
        filter.set_ports(&policy.ports, &BTreeSet::new())?;
        // `allow`, not `sync_allowlist`: a policy may hold a non-canonical entry on purpose
        // (an IPv4-mapped prefix in the IPv6 trie), which must reach the trie as it is.
        for cidr in &policy.allow {
            filter.allow(cidr)?;
        }
        filter.set_action(policy.action.into())?;
        let counters = filter.counters()?;
        Ok(Differential {
            filter,
            policy,
            counters,
            pending: Counters::default(),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs `frame` once through the program.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<ProgramRun> {
        let mut output = vec![0u8; frame.len() + 256];
        let result = self
            .filter
            .program()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut output),
                ..TestRunOptions::new()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN on {} bytes", frame.len()))?;
        output.truncate(result.data_size_out as usize);
        Ok(ProgramRun {
            return_value: result.return_value,
            output,
        })
    }

    /// Compares program and reference on `frame`. With `check_counters`, also reads the
    /// program's counters and compares their change since the last check with the reference's
    /// tally of every frame run since then. Returns the reference verdict and the rule row
    /// that decided it.
    pub fn check(&mut self, frame: &[u8], check_counters: bool) -> Result<(Verdict, Rule), String> {
        let (expected, rule) = reference::classify_with_rule(frame, &self.policy);
        if frame.len() < MIN_TEST_RUN_LEN {
            // Cannot be test-run; the rule's answer is fixed, so hold the reference to it.
            let short = Verdict {
                pass: true,
                family: Family::Other,
                counter: Counter::Malformed,
            };
            return if expected == short {
                Ok((expected, rule))
            } else {
                Err(format!(
                    "reference: {expected:?} for a {}-byte frame",
                    frame.len()
                ))
            };
        }
        let result = self.compare(frame, expected, check_counters);
        if result.is_err() {
            // Start the next comparison from a clean slate, so one bad frame is not blamed
            // again on the frames that follow it (proptest shrinks by running many of them).
            self.resync();
        }
        result.map(|()| (expected, rule))
    }

    fn compare(
        &mut self,
        frame: &[u8],
        expected: Verdict,
        check_counters: bool,
    ) -> Result<(), String> {
        let run = self.run(frame).map_err(|error| format!("{error:#}"))?;
        expected.count(&mut self.pending);
        let want = if expected.pass { XDP_PASS } else { XDP_DROP };
        if run.return_value != want {
            return Err(format!(
                "program returned {} ({}), reference says {expected:?}",
                run.return_value,
                xdp_name(run.return_value)
            ));
        }
        if expected.pass && run.output != frame {
            return Err(format!(
                "passed frame was changed: output {}",
                hex(&run.output)
            ));
        }
        if check_counters {
            self.check_counters()?;
        }
        Ok(())
    }

    fn resync(&mut self) {
        if let Ok(now) = self.filter.counters() {
            self.counters = now;
        }
        self.pending = Counters::default();
    }

    /// Reads the counters and compares their change with the reference tally since the last
    /// read.
    pub fn check_counters(&mut self) -> Result<(), String> {
        let now = self
            .filter
            .counters()
            .map_err(|error| format!("{error:#}"))?;
        let mut delta = Counters::default();
        for family in Family::ALL {
            let (after, before) = (now.family(family), self.counters.family(family));
            // Every counter of the shared definition: a counter added later is checked too.
            let row = &mut delta.0[family as usize];
            for (counter, value) in after.iter() {
                row.values[counter as usize] = value - before.get(counter);
            }
        }
        let expected = std::mem::take(&mut self.pending);
        self.counters = now;
        if delta == expected {
            Ok(())
        } else {
            Err(format!(
                "counter change differs:\n  program   {delta:?}\n  reference {expected:?}"
            ))
        }
    }
}

fn xdp_name(value: u32) -> &'static str {
    match value {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// The frame as one hex string (for `from_hex`).
pub fn hex(frame: &[u8]) -> String {
    frame.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

/// Parses a hex string; whitespace is ignored, so a frame can be wrapped over lines.
pub fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            u8::from_str_radix(std::str::from_utf8(pair).expect("ASCII"), 16).expect("hex digit")
        })
        .collect()
}

/// A report for a failing frame, ready to paste into `tests/tests/regressions.rs`.
pub fn regression_snippet(frame: &[u8], policy: &Policy, reason: &str) -> String {
    let verdict = reference::classify(frame, policy);
    let mut text = format!(
        "program and reference disagree: {reason}\nreference verdict: {verdict:?}\n\
         policy: {policy:?}\nframe ({} bytes):\n    from_hex(\"",
        frame.len()
    );
    for (index, chunk) in frame.chunks(32).enumerate() {
        if index > 0 {
            text.push_str("\n              ");
        }
        text.push_str(&hex(chunk));
    }
    text.push_str("\")\n");
    text
}

/// The policy the differential tests run under: prefixes with distinct edges in both families,
/// several protected ports including the extremes, and a trap for IPv4-mapped sources.
pub fn test_policy(action: RuleAction) -> Policy {
    let mut allow: BTreeSet<Cidr> = [
        "192.0.2.0/25",
        "198.51.100.7/32",
        "198.51.100.64/31",
        "2001:db8:1::/48",
        "2001:db8:2::5/128",
        "2001:db8:3::/127",
    ]
    .iter()
    .map(|text| text.parse().expect("test CIDR"))
    .collect();
    // An IPv4-mapped prefix in the IPv6 trie: the rule looks mapped sources up in the IPv4
    // list only, so ::ffff:203.0.113.x must NOT be allowed by this entry.
    allow.insert(Cidr::V6 {
        addr: "::ffff:203.0.113.0".parse().expect("address"),
        prefix_len: 120,
    });
    Policy {
        ports: [1, 25, 587, 65535].into(),
        allow,
        action,
    }
}
