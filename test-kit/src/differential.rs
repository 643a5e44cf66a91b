//! Runs frames through the loaded XDP program (BPF_PROG_TEST_RUN) and through the reference
//! classifier (`verdict-reference`), and reports any difference: verdict, counter row and
//! counter, and the bytes of a passed frame.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use filter_common::{Counter, Counters, Family};
use filter_user::{cidr::Cidr, filter::Filter};
use verdict_reference::{self as reference, Policy, Prefix, Rule, RuleAction, Verdict};

use crate::program::{Run, RunOptions, XDP_DROP, XDP_PASS, load_filter, test_run, xdp_name};

/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header (EINVAL), so frames
/// under this length are judged by the reference alone.
pub const MIN_TEST_RUN_LEN: usize = 14;

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
        crate::root::require_root();
        // As the policy has them: a policy may hold a non-canonical entry on purpose (an
        // IPv4-mapped prefix in the IPv6 trie), which must reach the trie as it is.
        let allow: Vec<Cidr> = policy
            .allow
            .iter()
            .map(|prefix| loader_cidr(*prefix))
            .collect();
        let filter = load_filter(&policy.ports, &allow, Some(policy.action.into()))?;
        let counters = filter.maps.counters.read()?;
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
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<Run> {
        test_run(self.filter.program.xdp()?, frame, RunOptions::default())
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
                counter: Some(Counter::Malformed),
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
        if run.action != want {
            return Err(format!(
                "program returned {} ({}), reference says {expected:?}",
                run.action,
                xdp_name(run.action)
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
        if let Ok(now) = self.filter.maps.counters.read() {
            self.counters = now;
        }
        self.pending = Counters::default();
    }

    /// Reads the counters and compares their change with the reference tally since the last
    /// read.
    pub fn check_counters(&mut self) -> Result<(), String> {
        let now = self
            .filter
            .maps
            .counters
            .read()
            .map_err(|error| format!("{error:#}"))?;
        let mut delta = Counters::default();
        for family in Family::ALL {
            let (after, before) = (now.family(family), self.counters.family(family));
            let row = delta.family_mut(family);
            for counter in Counter::ALL {
                row.values[counter as usize] = after.get(counter) - before.get(counter);
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

/// The loader's prefix for a reference prefix, bit for bit (no canonical form imposed).
fn loader_cidr(prefix: Prefix) -> Cidr {
    match prefix.addr {
        IpAddr::V4(addr) => Cidr::V4 {
            addr,
            prefix_len: prefix.len,
        },
        IpAddr::V6(addr) => Cidr::V6 {
            addr,
            prefix_len: prefix.len,
        },
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
    let mut allow: BTreeSet<Prefix> = [
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
    allow.insert(Prefix::new(
        "::ffff:203.0.113.0".parse().expect("address"),
        120,
    ));
    Policy {
        ports: [1, 25, 587, 65535].into(),
        allow,
        action,
    }
}
