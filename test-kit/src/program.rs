//! The real XDP program, loaded and configured for a test, and frames run through it with
//! BPF_PROG_TEST_RUN.
//!
//! [`load_filter`] is the only place here that loads and configures a filter: the harness, the
//! differential checker, the DNS rig and the micro benchmark all go through it.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Context as _;
use aya::programs::{TestRun, TestRunOptions, Xdp};
use filter_common::{Action, Family, FamilyCounters};
use filter_user::{cidr::Cidr, filter::Filter};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The name of an XDP return value, for failure messages.
pub fn xdp_name(value: u32) -> &'static str {
    match value {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// Loads the program (each call gets its own maps, so tests in parallel threads never see
/// each other's state), protects `ports`, allowlists `allow` and, if given, sets `action`;
/// without one the action stays the load default, `Drop`.
///
/// Every prefix goes in as it is, through `Allowlist::allow`: a test may hold a non-canonical
/// entry on purpose (an IPv4-mapped prefix in the IPv6 trie), which must reach the trie
/// unchanged. On a freshly loaded program this is what `Allowlist::sync` does too.
pub fn load_filter(
    ports: &BTreeSet<u16>,
    allow: &[Cidr],
    action: Option<Action>,
) -> anyhow::Result<Filter> {
    crate::root::ensure_root("loading the XDP program")?;
    let mut filter = Filter::load().context("loading the XDP program")?;
    filter
        .maps
        .ports
        .set(ports, &BTreeSet::new())
        .with_context(|| format!("protecting ports {ports:?}"))?;
    for cidr in allow {
        filter
            .allowlist
            .allow(cidr)
            .with_context(|| format!("allowlisting {cidr} ({} prefixes)", allow.len()))?;
    }
    if let Some(action) = action {
        filter
            .maps
            .settings
            .set_action(action)
            .context("setting the action")?;
    }
    Ok(filter)
}

/// How to run a frame through BPF_PROG_TEST_RUN.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Runs in one call; the kernel reports the average duration of one.
    pub repeat: u32,
    /// Whether to read back the frame as the program left it.
    pub output: bool,
}

impl Default for RunOptions {
    /// One run, output kept: what verdict tests want.
    fn default() -> Self {
        RunOptions {
            repeat: 1,
            output: true,
        }
    }
}

/// The result of one test run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The program's return value (`XDP_PASS`, `XDP_DROP`, `XDP_TX`, ...).
    pub action: u32,
    /// The frame as the program left it (empty unless [`RunOptions::output`]).
    pub output: Vec<u8>,
    /// Average time of one run, as the kernel measured it.
    pub duration: Duration,
}

/// Runs `frame` through `program` with BPF_PROG_TEST_RUN. The kernel refuses input shorter
/// than an Ethernet header (EINVAL).
pub fn test_run(program: &Xdp, frame: &[u8], options: RunOptions) -> anyhow::Result<Run> {
    // Room for a program that grows the frame (a RST is never longer than the SYN plus this).
    let mut output = vec![0u8; if options.output { frame.len() + 256 } else { 0 }];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: options.output.then_some(output.as_mut_slice()),
            repeat: options.repeat,
            ..TestRunOptions::new()
        })
        .with_context(|| format!("BPF_PROG_TEST_RUN on {} bytes", frame.len()))?;
    output.truncate(if options.output {
        result.data_size_out as usize
    } else {
        0
    });
    Ok(Run {
        action: result.return_value,
        output,
        duration: result.duration,
    })
}

/// A loaded program with its maps, configured for one test.
pub struct Harness {
    pub filter: Filter,
}

impl Harness {
    /// Loads the program with `ports` protected and `allow` (CIDR text) allowlisted.
    pub fn new(ports: &[u16], allow: &[&str]) -> Harness {
        crate::root::require_root();
        let allow: Vec<Cidr> = allow
            .iter()
            .map(|c| c.parse().expect("test CIDR"))
            .collect();
        let filter = load_filter(&ports.iter().copied().collect(), &allow, None)
            .unwrap_or_else(|error| panic!("{error:#}"));
        Harness { filter }
    }

    pub fn set_action(&mut self, action: Action) {
        self.filter
            .maps
            .settings
            .set_action(action)
            .expect("setting the action");
    }

    /// Runs `frame` once through the program.
    pub fn run(&self, frame: &[u8]) -> Run {
        let program = self.filter.program.xdp().expect("program");
        test_run(program, frame, RunOptions::default()).unwrap_or_else(|error| panic!("{error:#}"))
    }

    pub fn counters(&self, family: Family) -> FamilyCounters {
        *self
            .filter
            .maps
            .counters
            .read()
            .expect("reading counters")
            .family(family)
    }
}
