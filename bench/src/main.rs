//! `mxguard-bench` (run through `cargo xtask bench`): generates the traffic, measures every
//! program and firewall in one run, prints a table, writes JSON and docs/benchmarks.md.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench::{
    flood::{self, Case, FloodOptions},
    mail::{self, MailOptions},
    micro::{self, MicroOptions},
    milter_cost::{self, MilterCostOptions},
    pcap, report,
    traffic::{self, Class},
};
use clap::Parser;
use test_kit::{netns, root::ensure_root};

#[derive(Parser)]
#[command(
    name = "mxguard-bench",
    about = "Benchmark mxguard against the alternatives"
)]
struct Args {
    /// Smoke run: every case once, with fewer frames and shorter windows (well under three
    /// minutes in all; CI runs it).
    #[arg(long)]
    quick: bool,
    /// Replay this capture (pcap or pcapng, Ethernet) instead of the generated classes.
    #[arg(long, value_name = "FILE")]
    pcap: Vec<PathBuf>,
    /// Where the JSON results and the pcap files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Markdown report; default docs/benchmarks.md for a full run of the generated traffic,
    /// <out>/benchmarks.md otherwise.
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Skip the BPF_PROG_TEST_RUN measurements.
    #[arg(long)]
    no_micro: bool,
    /// Skip the veth flood.
    #[arg(long)]
    no_flood: bool,
    /// Skip the mail-under-flood section (Postfix, smtp-source, hping3).
    #[arg(long)]
    no_mail: bool,
    /// Skip the milter's cost (Postfix with and without mxguard's milter).
    #[arg(long)]
    no_milter: bool,
    /// Flood: run the receiver as a threaded NAPI thread on its own CPU (default: in softirq on
    /// the sender's CPU, which avoids cross-CPU wake-ups that dominate on a VM).
    #[arg(long)]
    threaded_receiver: bool,
}

const SEED: u64 = 0x6d78_6775_6172_6425;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_root("the benchmark")?;
    let started = Instant::now();
    netns::sweep_stale();
    netns::install_signal_cleanup()?;
    bench::ensure_bpffs()?;
    for tool in [
        "ip",
        "bpftool",
        "xdp-filter",
        "iptables-restore",
        "ip6tables-restore",
        "nft",
        "ethtool",
    ] {
        if !on_path(tool) {
            bail!(
                "{tool} not found: run `cargo xtask setup` (it installs the benchmark's Debian packages)"
            );
        }
    }
    let mode = if args.quick { "quick" } else { "full" };
    let pcap_dir = args.out.join("pcap");
    std::fs::create_dir_all(&pcap_dir)
        .with_context(|| format!("creating {}", pcap_dir.display()))?;

    // Traffic: generated classes written to pcap and read back, or the user's captures.
    let frames = if args.quick { 4096 } else { 32_768 };
    let mut classes: Vec<Class> = Vec::new();
    let mut traffic_info = Vec::new();
    if args.pcap.is_empty() {
        for class in traffic::classes(frames, SEED) {
            let path = pcap_dir.join(format!("{}.pcap", class.name));
            pcap::write(&path, &class.frames)?;
            let frames = pcap::read(&path)?;
            traffic_info.push(report::TrafficInfo {
                name: class.name.clone(),
                description: class.description.clone(),
                frames: frames.len(),
                pcap: path.display().to_string(),
            });
            classes.push(Class { frames, ..class });
        }
    } else {
        for path in &args.pcap {
            let frames = pcap::read(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pcap".into());
            traffic_info.push(report::TrafficInfo {
                name: name.clone(),
                description: format!("user capture {}", path.display()),
                frames: frames.len(),
                pcap: path.display().to_string(),
            });
            classes.push(Class {
                name,
                description: format!("user capture {}", path.display()),
                flood: false,
                frames,
            });
        }
    }

    let micro = if args.no_micro {
        None
    } else {
        let options = MicroOptions {
            repeat: if args.quick { 20_000 } else { 100_000 },
            reps: if args.quick { 1 } else { 5 },
            frames_per_class: if args.quick { 8 } else { 32 },
            sizes: vec![10, 1000, 100_000],
            seed: SEED,
        };
        Some(micro::run(&options, &classes, true)?)
    };

    let flood = if args.no_flood {
        None
    } else {
        let options = FloodOptions {
            threaded_receiver: args.threaded_receiver,
            warmup: Duration::from_millis(if args.quick { 300 } else { 1000 }),
            duration: Duration::from_millis(if args.quick { 1000 } else { 4000 }),
            reps: if args.quick { 1 } else { 5 },
            seed: SEED,
        };
        // The macro run replays the floods and the mix (quick: the IPv4 flood only), or the
        // user's captures. Frames larger than the veth MTU cannot be sent and are left out.
        let wanted: &[&str] = if !args.pcap.is_empty() {
            &[]
        } else if args.quick {
            &["flood-v4"]
        } else {
            &["flood-v4", "flood-v6", "mix"]
        };
        let traffic: Vec<(String, Vec<Vec<u8>>)> = classes
            .iter()
            .filter(|class| wanted.is_empty() || wanted.contains(&class.name.as_str()))
            .map(|class| {
                let frames: Vec<Vec<u8>> = class
                    .frames
                    .iter()
                    .filter(|f| f.len() <= 1514)
                    .cloned()
                    .collect();
                (class.name.clone(), frames)
            })
            .collect();
        if let Some((name, _)) = traffic.iter().find(|(_, frames)| frames.is_empty()) {
            bail!("{name}: no frame fits a 1500-byte MTU");
        }
        Some(flood::run(&options, &traffic, &Case::ALL)?)
    };

    // The mail section brings its own flood; a run of the user's captures skips it.
    let mail = (!args.no_mail && args.pcap.is_empty()).then(|| {
        mail::run(&MailOptions {
            messages: if args.quick { 400 } else { 1000 },
            sessions: 10,
            message_len: 1000,
            deadline: Duration::from_secs(if args.quick { 3 } else { 10 }),
            // A rate the generator's core sustains whatever the victim runs: the same flood
            // for every case.
            flood_rate: Some(400_000.0),
            warmup: Duration::from_millis(if args.quick { 300 } else { 1000 }),
            reps: if args.quick { 1 } else { 7 },
            test_run_repeat: if args.quick { 20_000 } else { 100_000 },
            seed: SEED,
        })
    });

    let milter = (!args.no_milter && args.pcap.is_empty())
        .then(|| {
            milter_cost::run(&MilterCostOptions {
                messages: if args.quick { 300 } else { 2000 },
                sessions: 10,
                reps: if args.quick { 2 } else { 5 },
            })
        })
        .transpose()?;
    let mut targets = if args.pcap.is_empty() {
        report::targets(micro.as_ref(), flood.as_ref())
    } else {
        Vec::new()
    };
    targets.extend(mail.iter().flat_map(mail::targets));
    targets.extend(milter.as_ref().map(milter_cost::target));
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command += " --quick";
    }
    for path in &args.pcap {
        command += &format!(" --pcap {}", path.display());
    }
    let report = report::Report {
        mode: mode.into(),
        command,
        machine: report::Machine::probe(),
        traffic: traffic_info,
        micro,
        flood,
        mail,
        milter,
        targets,
    };
    println!("{}", report::terminal(&report));

    let json = args.out.join(if args.quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let doc = args.doc.clone().unwrap_or_else(|| {
        if args.quick
            || !args.pcap.is_empty()
            || args.no_micro
            || args.no_flood
            || args.no_mail
            || args.no_milter
        {
            args.out.join("benchmarks.md")
        } else {
            PathBuf::from("docs/benchmarks.md")
        }
    });
    std::fs::write(&doc, report::markdown(&report))
        .with_context(|| format!("writing {}", doc.display()))?;
    println!(
        "wrote {} and {} in {:.0} s",
        json.display(),
        doc.display(),
        started.elapsed().as_secs_f64()
    );
    // A case that could not be set up is in the table, and the run fails.
    let failures = report.mail.as_ref().map(mail::MailResults::failures);
    if let Some(failures) = failures.filter(|f| !f.is_empty()) {
        bail!("mail under flood: {}", failures.join("; "));
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| Path::new(&dir).join(tool).is_file())
}
