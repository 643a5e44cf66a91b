//! Loads the real XDP program and runs frames through it with BPF_PROG_TEST_RUN.

use std::collections::BTreeSet;

use aya::programs::{TestRun, TestRunOptions};
use filter_common::{Action, Family, FamilyCounters};
use filter_user::{cidr::Cidr, filter::Filter};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Fails the test loudly unless it runs as root: these tests never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads XDP programs and must run as root (cargo xtask test does)"
    );
}

/// A loaded program with its maps, configured for one test.
pub struct Harness {
    pub filter: Filter,
}

/// The result of one test run.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub output: Vec<u8>,
}

impl Harness {
    /// Loads the program with `ports` protected and `allow` (CIDR text) allowlisted.
    pub fn new(ports: &[u16], allow: &[&str]) -> Harness {
        require_root();
        let mut filter = Filter::load().expect("loading the XDP program");
        let ports: BTreeSet<u16> = ports.iter().copied().collect();
        filter
            .set_ports(&ports, &BTreeSet::new())
            .expect("setting ports");
        let allow: BTreeSet<Cidr> = allow
            .iter()
            .map(|c| c.parse().expect("test CIDR"))
            .collect();
        filter
            .sync_allowlist(&allow)
            .expect("filling the allowlist");
        Harness { filter }
    }

    pub fn set_action(&mut self, action: Action) {
        self.filter.set_action(action).expect("setting the action");
    }

    /// Runs `frame` once through the program.
    pub fn run(&self, frame: &[u8]) -> Run {
        let mut output = vec![0u8; frame.len() + 256];
        let result = self
            .filter
            .program()
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut output),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        output.truncate(result.data_size_out as usize);
        Run {
            action: result.return_value,
            output,
        }
    }

    pub fn counters(&self, family: Family) -> FamilyCounters {
        *self
            .filter
            .counters()
            .expect("reading counters")
            .family(family)
    }
}
