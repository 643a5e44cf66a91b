//! Mail through Postfix with mxguard's milter against without it, in one run: Postfix's own
//! `smtp-source` sends the same messages (carrying the filtering service's headers, from an
//! allowlisted client, so every one takes the full decision path and is accepted) to one
//! private Postfix (test-kit's fixture, discard transport) on loopback, alternating between
//! `smtpd_milters` empty and pointing at the milter. The milter is filter-user's own server
//! (`MilterHandle`), run in this process on one tokio worker thread as the daemon runs it on
//! its one thread.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use filter_user::milter::{MilterAction, MilterEndpoint, MilterHandle, MilterSettings, Policy};
use serde::Serialize;
use test_kit::{
    postfix::{Postfix, PostfixConfig, Transport, free_addr},
    temp_dir::TempDir,
};

use crate::{report::Target, stats::Summary};

pub struct MilterCostOptions {
    /// Messages per timed run.
    pub messages: usize,
    /// Parallel SMTP sessions (smtp-source -s).
    pub sessions: usize,
    /// Timed runs per configuration.
    pub reps: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct MilterCostResults {
    pub messages: usize,
    pub sessions: usize,
    pub reps: usize,
    /// Messages per second accepted by Postfix without a milter.
    pub without_milter: Summary,
    /// The same with mxguard's milter in smtpd_milters.
    pub with_milter: Summary,
    /// Median rate with the milter over the median rate without it.
    pub ratio: f64,
    /// The milter's cost as a share of Postfix's rate: (1 - ratio) * 100.
    pub cost_pct: f64,
    /// Messages the milter judged accepted (all of the with-milter runs' messages).
    pub milter_accepted: u64,
}

/// The message smtp-source sends (it adds CRLF after each line).
const MESSAGE: &str = "From: <sender@relay.test>\n\
To: <postmaster@mx.mxguard.test>\n\
Subject: mxguard benchmark\n\
X-MS.com-server: mx1.mail-scanning.test\n\
X-MS.com-version: 7.1\n\
\n\
A short body, as most mail is: the milter never reads it.\n";

pub fn run(options: &MilterCostOptions) -> anyhow::Result<MilterCostResults> {
    let scratch = TempDir::new("bench-mail");
    std::fs::create_dir_all(scratch.path()).context("creating the scratch directory")?;
    let message = scratch.path().join("message.txt");
    std::fs::write(&message, MESSAGE).context("writing the message")?;

    // The milter: loopback is the allowlisted relay here and nothing is exempt, so every
    // message is judged in full and accepted.
    let milter_addr = free_addr(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let settings = MilterSettings {
        endpoint: MilterEndpoint::Inet(milter_addr),
        policy: Policy {
            rules: filter_user::milter::Rules {
                required: vec!["X-MS.com-server".parse()?, "X-MS.com-version".parse()?],
                exempt: Vec::new(),
            },
            on_missing: MilterAction::Reject,
            on_forged: MilterAction::Reject,
        },
        max_connections: filter_user::milter::DEFAULT_MAX_CONNECTIONS,
        idle_timeout: filter_user::milter::DEFAULT_IDLE_TIMEOUT,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("the milter's runtime")?;
    let allow = BTreeSet::from(["127.0.0.0/8".parse()?]);
    let milter = {
        let _inside = runtime.enter();
        MilterHandle::bind(&settings, scratch.path())?.serve(&allow)
    };

    let postfix = PostfixConfig::new(free_addr(IpAddr::V4(Ipv4Addr::new(127, 0, 25, 25))))
        .transport(Transport::Discard)
        .param("default_process_limit", "200")
        .start()?;
    let endpoint = format!("inet:{milter_addr}");
    let mut without = Vec::new();
    let mut with = Vec::new();
    // One untimed round of each first (process start-up), then alternate the order per
    // repetition so drift on a shared machine hits both alike.
    for rep in 0..=options.reps {
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for use_milter in order {
            let value = if use_milter { endpoint.as_str() } else { "" };
            postfix.set_params(&[("smtpd_milters", value)])?;
            let rate = timed_run(&postfix, options, &message)?;
            if rep > 0 {
                if use_milter {
                    with.push(rate);
                } else {
                    without.push(rate);
                }
            }
        }
    }
    let accepted = milter.counts().accepted;
    let refused = milter.counts().missing + milter.counts().forged;
    {
        let _inside = runtime.enter();
        milter.stop();
    }
    drop(postfix);
    if refused > 0 {
        bail!("the milter refused {refused} benchmark messages");
    }
    let without_milter = Summary::of(&without);
    let with_milter = Summary::of(&with);
    let ratio = with_milter.median / without_milter.median;
    Ok(MilterCostResults {
        messages: options.messages,
        sessions: options.sessions,
        reps: options.reps,
        without_milter,
        with_milter,
        ratio,
        cost_pct: (1.0 - ratio) * 100.0,
        milter_accepted: accepted,
    })
}

/// One smtp-source run; returns accepted messages per second.
fn timed_run(
    postfix: &Postfix,
    options: &MilterCostOptions,
    message: &std::path::Path,
) -> anyhow::Result<f64> {
    let server = postfix.addr();
    let started = Instant::now();
    let output = Command::new("smtp-source")
        .args(["-s", &options.sessions.to_string()])
        .args(["-m", &options.messages.to_string()])
        .arg("-F")
        .arg(message)
        .args(["-f", "sender@relay.test", "-t", Postfix::RECIPIENT])
        .arg(format!("{}:{}", server.ip(), server.port()))
        .output()
        .context("running smtp-source (in the postfix package)")?;
    let elapsed = started.elapsed();
    if !output.status.success() || !output.stderr.is_empty() {
        bail!(
            "smtp-source failed ({}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            postfix.log_tail()
        );
    }
    wait_drained(postfix)?;
    Ok(options.messages as f64 / elapsed.as_secs_f64())
}

/// Waits until the discard transport emptied the queue, so runs start alike.
fn wait_drained(postfix: &Postfix) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !postfix.queue()?.is_empty() {
        if Instant::now() > deadline {
            bail!("Postfix's queue did not drain:\n{}", postfix.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The target: the milter costs at most 10% of Postfix's rate, i.e. Postfix keeps at
/// least 0.90 of its rate with the milter.
pub fn target(results: &MilterCostResults) -> Target {
    Target::new(
        "Postfix msgs/s with mxguard's milter / without (at least 0.90)".into(),
        Some(results.ratio),
        0.9,
        false,
        "the milter's CPU competes with Postfix on a small host; per message the protocol costs \
         Postfix the option negotiation and one answered round trip (end of message): every \
         other step is sent without waiting (SMFIP_NR_*), with a fresh SMTP session and milter \
         connection per message",
    )
}

/// The table: both rates with their spread, and the ratio.
pub fn table(results: &MilterCostResults) -> String {
    let mut out =
        String::from("| Postfix | messages/s (median) | spread | ratio |\n|---|---:|---:|---:|\n");
    for (name, summary, ratio) in [
        ("without a milter", &results.without_milter, 1.0),
        ("with mxguard's milter", &results.with_milter, results.ratio),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0}% | {ratio:.3} |",
            summary.median,
            summary.spread_pct()
        );
    }
    out
}

/// The docs/benchmarks.md section.
pub fn markdown(results: &MilterCostResults) -> String {
    let mut out = String::from("## The milter's cost: Postfix with and without it\n\n");
    let _ = writeln!(
        out,
        "Postfix's `smtp-source` sends {} messages over {} parallel SMTP sessions to a private Postfix \
         (discard transport) on loopback, {} timed runs per configuration after an untimed one, alternating \
         `smtpd_milters` between empty and mxguard's milter. Every message carries the filtering \
         service's headers from an allowlisted client, so the milter judges each in full and accepts it \
         ({} accepted). A run ends when smtp-source has its last 250 and the queue is drained.\n",
        results.messages, results.sessions, results.reps, results.milter_accepted
    );
    out.push_str(&table(results));
    let _ = writeln!(
        out,
        "\nThe milter costs {:.1}% of Postfix's rate here (goal: at most 10%). Both Postfix and the milter \
         share the machine's two cores with smtp-source, so this is the cost on a busy host.\n",
        results.cost_pct
    );
    out
}
