//! Tables, targets, the JSON file and docs/benchmarks.md.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    flood::{Case, FloodResults},
    micro::{self, MicroResults},
};

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub hypervisor: Option<String>,
    pub date_utc: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_once(':'))
                .map(|(_, value)| value.trim().to_string())
        };
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0);
        let hypervisor = field("flags")
            .filter(|flags| flags.split_whitespace().any(|f| f == "hypervisor"))
            .map(|_| {
                let vendor = read("/sys/class/dmi/id/sys_vendor");
                let product = read("/sys/class/dmi/id/product_name");
                let name = format!("{} {}", vendor.trim(), product.trim());
                match name.trim() {
                    "" => "hypervisor flag set in /proc/cpuinfo".to_string(),
                    name => name.to_string(),
                }
            });
        let date = test_kit::netns::run(
            std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]),
        )
        .unwrap_or_default();
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
            cpus: crate::online_cpus(),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            hypervisor,
            date_utc: date.trim().to_string(),
        }
    }
}

/// A target from the issue, with the measured ratio and whether it is met.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: Option<f64>,
    /// The bound: at most (`upper`) or at least (otherwise).
    pub bound: f64,
    pub upper: bool,
    pub met: Option<bool>,
    pub note: String,
}

impl Target {
    fn new(name: String, measured: Option<f64>, bound: f64, upper: bool, note: &str) -> Target {
        let met = measured.map(|m| if upper { m <= bound } else { m >= bound });
        Target {
            name,
            measured,
            bound,
            upper,
            met,
            note: note.into(),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TrafficInfo {
    pub name: String,
    pub description: String,
    pub frames: usize,
    pub pcap: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub command: String,
    pub machine: Machine,
    pub traffic: Vec<TrafficInfo>,
    pub micro: Option<MicroResults>,
    pub flood: Option<FloodResults>,
    pub mail: Option<crate::mail::MailResults>,
    pub targets: Vec<Target>,
}

/// The issue's targets, from this run's numbers (only where the generated flood classes ran).
pub fn targets(micro: Option<&MicroResults>, flood: Option<&FloodResults>) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(micro) = micro {
        for (size, bound) in [(1000usize, 1.5), (100_000, 2.0)] {
            for class in ["flood-v4", "flood-v6"] {
                let ratio = micro_ratio(micro, &micro::mxguard_name(size, true), class);
                if micro.row(micro::EMPTY, class).is_none() {
                    continue;
                }
                targets.push(Target::new(
                    format!("micro: mxguard {size} prefixes on {class} ≤ {bound}× empty"),
                    ratio,
                    bound,
                    true,
                    "median ns per packet over the empty program's, BPF_PROG_TEST_RUN",
                ));
            }
        }
    }
    if let Some(flood) = flood {
        let traffic = "flood-v4";
        let pps = |case| flood.row(case, traffic).map(|r| r.handled_pps.median);
        let cpu = |case| flood.row(case, traffic).map(|r| r.cpu_ns_per_packet.median);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let native = Case::MxguardNative;
        for (other, bound) in [(Case::IptablesRecipe, 3.0), (Case::Nftables, 2.0)] {
            targets.push(Target::new(
                format!(
                    "macro: mxguard native ≥ {bound}× {} (frames/s handled)",
                    other.label()
                ),
                ratio(pps(native), pps(other)),
                bound,
                false,
                "receiver's handled frames/s; bounded by what one sender core offers",
            ));
            targets.push(Target::new(
                format!(
                    "macro: mxguard native ≥ {bound}× {} (frames per receiver CPU-second)",
                    other.label()
                ),
                ratio(cpu(other), cpu(native)),
                bound,
                false,
                "inverse of receiver CPU time per frame: the rate one receiver core could sustain",
            ));
        }
        targets.push(Target::new(
            "macro: mxguard native within 15% of XDP drop-all (frames/s handled)".into(),
            ratio(pps(native), pps(Case::DropAll)),
            0.85,
            false,
            "",
        ));
        targets.push(Target::new(
            "macro: mxguard native within 15% of XDP drop-all (receiver CPU per frame)".into(),
            ratio(cpu(native), cpu(Case::DropAll)),
            1.15,
            true,
            "",
        ));
    }
    targets
}

fn micro_ratio(micro: &MicroResults, program: &str, class: &str) -> Option<f64> {
    let base = micro.row(micro::EMPTY, class)?.ns.median;
    let value = micro.row(program, class)?.ns.median;
    (base > 0.0).then(|| value / base)
}

pub fn micro_table(micro: &MicroResults) -> String {
    let mut classes: Vec<&str> = Vec::new();
    for row in &micro.rows {
        if !classes.contains(&row.class.as_str()) {
            classes.push(&row.class);
        }
    }
    let mut out = String::new();
    let _ = write!(out, "| program |");
    for class in &classes {
        let _ = write!(out, " {class} |");
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in &classes {
        out.push_str("---:|");
    }
    out.push('\n');
    for program in &micro.programs {
        let _ = write!(out, "| {} |", program.name);
        for class in &classes {
            match micro.row(&program.name, class) {
                Some(row) => {
                    let ratio = micro_ratio(micro, &program.name, class)
                        .map(|r| format!("{r:.2}×"))
                        .unwrap_or_default();
                    let _ = write!(
                        out,
                        " {ratio} ({:.1} ns ±{:.0}%, drop {:.0}%) |",
                        row.ns.median,
                        row.ns.spread_pct(),
                        row.drop_share * 100.0
                    );
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

pub fn flood_table(flood: &FloodResults) -> String {
    let mut out = String::from(
        "| traffic | receiver runs | handled kframes/s | ×iptables recipe | ×nftables | ×drop-all | receiver CPU ns/frame | CPU ×drop-all | receiver busy | offered kframes/s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &flood.rows {
        let base = |case: Case| flood.row(case, &row.traffic);
        let pps_ratio = |case: Case| {
            base(case)
                .map(|b| format!("{:.2}×", row.handled_pps.median / b.handled_pps.median))
                .unwrap_or_else(|| "–".into())
        };
        let cpu_ratio = base(Case::DropAll)
            .map(|b| {
                format!(
                    "{:.2}×",
                    row.cpu_ns_per_packet.median / b.cpu_ns_per_packet.median
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} ±{:.0}% | {} | {} | {} | {:.0} ±{:.0}% | {} | {:.0}% | {:.0} |",
            row.traffic,
            row.case,
            row.handled_pps.median / 1e3,
            row.handled_pps.spread_pct(),
            pps_ratio(Case::IptablesRecipe),
            pps_ratio(Case::Nftables),
            pps_ratio(Case::DropAll),
            row.cpu_ns_per_packet.median,
            row.cpu_ns_per_packet.spread_pct(),
            cpu_ratio,
            row.receiver_busy.median * 100.0,
            row.offered_pps.median / 1e3,
        );
    }
    out
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | verdict |\n|---|---:|---|\n");
    for target in targets {
        let measured = target
            .measured
            .map(|m| format!("{m:.2}×"))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| {} | {measured} | {} |",
            target.name,
            target.verdict()
        );
    }
    out
}

/// The terminal summary.
pub fn terminal(report: &Report) -> String {
    let mut out = String::new();
    if let Some(micro) = &report.micro {
        let _ = writeln!(
            out,
            "\nMicro (BPF_PROG_TEST_RUN, repeat {}, {} frames per class, median of {}): ratio to the empty program (ns per packet ±spread, share dropped)\n",
            micro.repeat, micro.frames_per_class, micro.reps
        );
        out.push_str(&micro_table(micro));
    }
    if let Some(flood) = &report.flood {
        let _ = writeln!(
            out,
            "\nMacro (flood over veth, {:.1} s windows, median of {}; sender on CPU {}, receiver on CPU {}: {})\n",
            flood.duration_s, flood.reps, flood.sender_cpu, flood.receiver_cpu, flood.receiver
        );
        out.push_str(&flood_table(flood));
    }
    if let Some(mail) = &report.mail {
        out.push_str("\nMail (Postfix, smtp-source)\n\n");
        out.push_str(&crate::mail::table(mail));
    }
    if !report.targets.is_empty() {
        out.push_str("\nTargets\n\n");
        out.push_str(&targets_table(&report.targets));
    }
    out
}

/// docs/benchmarks.md: the latest results, the machine, how to reproduce, how to read them.
pub fn markdown(report: &Report) -> String {
    let m = &report.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Generated by `{}` on {} ({} mode). Every figure below comes from that one run; ratios compare cases of the same run. Raw numbers: the JSON file next to the run (`target/bench/results.json`).\n",
        report.command, m.date_utc, report.mode
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(
        out,
        "- kernel {}, {} × {}, {:.0} GiB{}\n- shared with other work while measuring: see the spreads.\n",
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.hypervisor
            .as_ref()
            .map(|h| format!(", virtual machine ({h})"))
            .unwrap_or_default()
    );
    if let Some(flood) = &report.flood {
        let _ = writeln!(out, "- {}; {}\n", flood.iptables_version, flood.nft_version);
    }
    let _ = writeln!(out, "## Reproduce\n");
    out.push_str(
        "```sh\ncargo xtask bench            # full run (about 15 minutes), rewrites this file\ncargo xtask bench --quick    # smoke run (under two minutes), writes target/bench/\ncargo xtask bench --pcap capture.pcap   # your traffic instead of the generated classes\n```\n\n",
    );
    out.push_str(
        "As root, on Linux with XDP. `cargo xtask setup` (run by `bench` first) installs what it needs: \
         xdp-tools, iptables, nftables, ethtool, bpftool. Everything happens in network namespaces the \
         benchmark creates and deletes (also on failure); no rule, program or frame touches the host's \
         interfaces.\n\n",
    );
    let _ = writeln!(out, "## Traffic\n");
    out.push_str("| class | frames | what |\n|---|---:|---|\n");
    for traffic in &report.traffic {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            traffic.name, traffic.frames, traffic.description
        );
    }
    out.push_str(
        "\nDestinations are the documentation addresses 192.0.2.1 and 2001:db8::1; the allowlist starts with ten \
         relay prefixes in 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32, and larger lists add random \
         prefixes of mixed lengths spread over the whole unicast space (map contents only, never configured \
         on an interface): the honest worst case for the fast path. The pcap files are written to \
         `target/bench/pcap/` and read back, so `--pcap` takes the same path.\n\n",
    );
    if let Some(micro) = &report.micro {
        let _ = writeln!(out, "## Micro: cost per packet (BPF_PROG_TEST_RUN)\n");
        let _ = writeln!(
            out,
            "Each cell: ratio to the empty program on the same class, then the median ns per packet with its spread \
             ((max − min) / median over {} repetitions), and the share of frames the program dropped. Each sample \
             averages {} distinct frames of the class, each run {} times by the kernel.\n",
            micro.reps, micro.frames_per_class, micro.repeat
        );
        for program in &micro.programs {
            let _ = writeln!(out, "- **{}**: {}", program.name, program.description);
        }
        out.push('\n');
        out.push_str(&micro_table(micro));
        out.push_str(
            "\nA test run repeats one frame, so map lookups hit a warm cache; a flood of random sources over a \
             large trie also misses the cache. The fast path (per family, an 8 KiB bitmap with one bit per /16 \
             and a 2 MiB one with one bit per /24 that any allowlisted prefix touches, checked before the \
             LPM trie) turns most misses into one or two array reads; \"trie only\" is the same program \
             with every bit set. xdp-filter is loaded by \
             xdp-filter itself and run by id through `bpftool prog run`; it cannot express \"SYN only\", \
             prefixes or exceptions, so it is a cost comparison only.\n\n",
        );
    }
    if let Some(flood) = &report.flood {
        let _ = writeln!(out, "## Macro: a flood through a veth pair\n");
        let _ = writeln!(
            out,
            "An AF_PACKET replayer (PACKET_QDISC_BYPASS, sendmmsg, real-time priority) on CPU {} sends the class \
             round and round into a veth pair; the receiving end (GRO on, so NAPI as with a NIC) runs on CPU {}: \
             receiver CPU time is {}. Everything the receiver does with a frame counts: XDP, netfilter, TCP and \
             the replies it builds (SYN cookies, RSTs, REJECTs), which a blackhole route then discards. Windows \
             of {:.1} s after a warm-up, median of {} repetitions, a fresh pair of namespaces per case. The \
             receiver listens on port 25, like the mail server it stands for.\n",
            flood.sender_cpu, flood.receiver_cpu, flood.receiver, flood.duration_s, flood.reps
        );
        out.push_str(&flood_table(flood));
        out.push_str(
            "\n**How to read this.** veth is not a NIC: no DMA, no ring refill, no interrupt; a frame arrives as \
             an skb the sender built, and native XDP on veth first copies it into a page when the skb lacks XDP \
             headroom (an AF_PACKET skb does), so even XDP drop-all pays a fixed cost per frame that a NIC driver \
             does not, and every case shares it. With sender and receiver on one core, handled frames/s \
             compares whole pipelines (sender cost included, the same in every case), so its ratios understate \
             the receivers' differences; receiver CPU per frame (softirq time) isolates them, and its inverse \
             is the rate one receiver core could absorb. On this shared 2-core VM the spreads are wide: \
             compare medians of the same run only.\n\n",
        );
    }
    if let Some(mail) = &report.mail {
        out.push_str(&crate::mail::markdown(mail));
    }
    if !report.targets.is_empty() {
        let _ = writeln!(out, "## Targets\n");
        out.push_str(&targets_table(&report.targets));
        out.push('\n');
        for target in &report.targets {
            if !target.note.is_empty() && target.met == Some(false) {
                let _ = writeln!(out, "- {}: {}", target.name, target.note);
            }
        }
    }
    out
}
