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
    /// Printed after the measured value: "×" for ratios, empty for a plain share.
    pub unit: String,
}

impl Target {
    pub fn new(name: String, measured: Option<f64>, bound: f64, upper: bool, note: &str) -> Target {
        let met = measured.map(|m| if upper { m <= bound } else { m >= bound });
        Target {
            name,
            measured,
            bound,
            upper,
            met,
            note: note.into(),
            unit: "×".into(),
        }
    }

    /// A share rather than a ratio (printed without "×").
    fn plain(mut self) -> Target {
        self.unit.clear();
        self
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
    pub milter: Option<crate::milter_cost::MilterCostResults>,
    pub targets: Vec<Target>,
}

/// The targets (issue 11), from this run's numbers (only where the generated classes ran).
pub fn targets(micro: Option<&MicroResults>, flood: Option<&FloodResults>) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(micro) = micro {
        const RATIO: &str =
            "median ns per packet over the empty program's on the same class, BPF_PROG_TEST_RUN";
        for size in [1000usize, 100_000] {
            let program = micro::mxguard_name(size, true);
            for class in ["flood-v4", "flood-v6"] {
                targets.push(Target::new(
                    format!("micro: mxguard {size} prefixes on {class} ≤ 1.3× empty"),
                    micro_ratio(micro, &program, class),
                    1.3,
                    true,
                    RATIO,
                ));
            }
            let bound = if size == 1000 { 2.0 } else { 2.5 };
            targets.push(Target::new(
                format!("micro: mxguard {size} prefixes on flood-v4-near ≤ {bound}× empty"),
                micro_ratio(micro, &program, "flood-v4-near"),
                bound,
                true,
                RATIO,
            ));
            targets.push(Target::new(
                format!("micro: mxguard {size} prefixes on worst-case ≤ 1.2× xdp-filter"),
                ratio_of(micro, &program, micro::XDP_FILTER, "worst-case"),
                1.2,
                true,
                "median ns per packet over xdp-filter's on the same frames (xdp-filter does not walk the extension headers: it passes these frames)",
            ));
        }
    }
    if let Some(flood) = flood {
        for traffic in ["flood-v4", "flood-v6"] {
            if flood.row(Case::DropAll, traffic).is_none() {
                continue;
            }
            let pps = |case| flood.row(case, traffic).map(|r| r.handled_pps.median);
            let cpu = |case| flood.row(case, traffic).map(|r| r.cpu_ns_per_packet.median);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let native = Case::MxguardNative;
            targets.push(Target::new(
                format!("macro {traffic}: mxguard native's marginal cost over drop-all ≤ 0.1 of nftables'"),
                marginal_cost(flood, native, traffic),
                0.1,
                true,
                "(mxguard − drop-all) ÷ (nftables set − drop-all), receiver CPU ns per frame: what the filter adds to the floor every XDP program pays on veth",
            ).plain());
            targets.push(Target::new(
                format!(
                    "macro {traffic}: mxguard native within 15% of XDP drop-all (frames/s handled)"
                ),
                ratio(pps(native), pps(Case::DropAll)),
                0.85,
                false,
                "receiver's handled frames/s; bounded by what one sender core offers",
            ));
            targets.push(Target::new(
                format!("macro {traffic}: mxguard native within 15% of XDP drop-all (receiver CPU per frame)"),
                ratio(cpu(native), cpu(Case::DropAll)),
                1.15,
                true,
                "",
            ));
        }
    }
    targets
}

/// `(case − drop-all) ÷ (nftables − drop-all)` in receiver CPU per frame on `traffic`: the
/// share of nftables' cost above the floor that `case` adds. None without a positive base.
pub fn marginal_cost(flood: &FloodResults, case: Case, traffic: &str) -> Option<f64> {
    let cpu = |case| flood.row(case, traffic).map(|r| r.cpu_ns_per_packet.median);
    let (value, floor, nft) = (cpu(case)?, cpu(Case::DropAll)?, cpu(Case::Nftables)?);
    (nft > floor).then(|| (value - floor) / (nft - floor))
}

/// `program`'s median over `base`'s on `class`.
fn ratio_of(micro: &MicroResults, program: &str, base: &str, class: &str) -> Option<f64> {
    let base = micro.row(base, class)?.ns.median;
    let value = micro.row(program, class)?.ns.median;
    (base > 0.0).then(|| value / base)
}

fn micro_ratio(micro: &MicroResults, program: &str, class: &str) -> Option<f64> {
    ratio_of(micro, program, micro::EMPTY, class)
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
        "| traffic | receiver runs | handled kframes/s | ×iptables recipe | ×nftables | ×drop-all | receiver CPU ns/frame | CPU ×drop-all | marginal cost | receiver busy | offered kframes/s |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
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
        let marginal = Case::ALL
            .into_iter()
            .find(|case| case.label() == row.case)
            .and_then(|case| marginal_cost(flood, case, &row.traffic))
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} ±{:.0}% | {} | {} | {} | {:.0} ±{:.0}% | {} | {marginal} | {:.0}% | {:.0} |",
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
            .map(|m| format!("{m:.2}{}", target.unit))
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
        out.push_str(&crate::mail::terminal(mail));
    }
    if let Some(milter) = &report.milter {
        out.push_str("\nThe milter's cost (Postfix, smtp-source)\n\n");
        out.push_str(&crate::milter_cost::table(milter));
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
        "```sh\ncargo xtask bench            # full run (about 25 minutes), rewrites this file\ncargo xtask bench --quick    # smoke run (under two minutes), writes target/bench/\ncargo xtask bench --pcap capture.pcap   # your traffic instead of the generated classes\n```\n\n",
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
             large map also misses the cache. The fast path (per family, an 8 KiB bitmap with one bit per /16 \
             and a 2 MiB one with one bit per /24 that any allowlisted prefix touches) turns most misses into \
             one or two array reads. Past it, IPv4 is exact per /24 block: a bitmap of blocks covered whole \
             by prefixes up to /24, then one hash lookup of the block's 256-bit address mask (prefixes /25 to \
             /32); no trie walk, whatever the list's size. IPv6 asks its LPM trie only when the block holds a \
             prefix shorter than /48 or a hashed /48 filter says \"maybe\" (the worst-case class's sources lie \
             in an allowlisted /24 but in none of its /48s; one inside an allowlisted /48 walks the trie). \
             \"filters off\" is the same program with the filter bitmaps all ones. The ratios to the empty \
             program depend on its floor, which moves with the machine (5 to 30 ns per run here on different \
             days): compare the ns added over it too. xdp-filter is loaded by xdp-filter itself and run by \
             id through `bpftool prog run`; it cannot express \"SYN only\", prefixes or exceptions, and it \
             passes the worst-case frames without walking their extension headers, so it is a cost \
             comparison only.\n\n",
        );
        out.push_str(STAGES);
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
             is the rate one receiver core could absorb. The marginal cost, (case − drop-all) ÷ (nftables − \
             drop-all) in receiver CPU per frame, is what a filter adds to the floor every XDP program pays on \
             veth, as a share of what nftables adds: drop-all itself costs a large part of nftables here, so \
             \"n× nftables\" in CPU per frame is out of reach on veth for any XDP program. On this shared \
             2-core VM the spreads are wide: compare medians of the same run only.\n\n",
        );
    }
    if let Some(mail) = &report.mail {
        out.push_str(&crate::mail::markdown(mail));
    }
    if let Some(milter) = &report.milter {
        out.push_str(&crate::milter_cost::markdown(milter));
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

/// Where the nanoseconds go: measured once with filter-ebpf's `off-*` features (one stage
/// compiled out per variant), not by every run.
const STAGES: &str = "\
### Where the nanoseconds go

Measured once (2026-12-02, `MXGUARD_EBPF_FEATURES=<feature> cargo build -p bench`, then \
`mxguard-bench --no-flood` per variant, variants run one after another on a machine shared with \
other builds, load average 6 to 15), not by every run: each variant of filter-ebpf compiles one \
stage out. ns added over the empty program, mxguard with 1,000 prefixes, median of 5 \
repetitions; instructions are those of the translated program (`bpftool prog dump xlated`, \
map lookups inlined). This VM exposes no PMU (`perf` reports `instructions` as not \
supported), so per-class path lengths in instructions could not be counted; the variants price \
the stages instead.

| variant | BPF instructions | flood-v4 | flood-v4-near | worst-case |
|---|---:|---:|---:|---:|
| before this change (LPM trie behind the bitmaps) | – | +9.9 ns | +74.5 ns | +63.2 ns |
| full program | 3256 | +9.7 ns | +19.7 ns | +25.2 ns |
| `off-action` (no config read, no reject branch) | 2441 | +6.7 ns | +16.3 ns | +23.8 ns |
| `off-allowlist` (every source denied) | 1626 | +6.6 ns | +7.0 ns | +19.2 ns |
| `off-sample` (no drop sampling) | 3120 | not settled (+33.1, +9.2) | +18.7 ns | +24.4 ns |
| `off-count` (no counters) | 3446 | not measured | not measured | not measured |

`off-count` ran twice while the empty program's own floor had risen from 6 to 50 ns (other \
work on the machine), so its figures say nothing; `off-sample` on flood-v4 disagreed between \
its two runs. Savings do not add up: with a stage gone LLVM lays the rest out anew. Read: on a \
random flood what remains without the allowlist (parse, port check, action, sampling gate, \
counting) is about 6.5 ns over the floor, the /16 bitmap read about 3 ns, and the action \
(config read and the reject branch's register pressure) about 3 ns; on flood-v4-near the IPv4 block structures cost about 13 ns where the \
trie walk cost 60 (1,000 prefixes) to 120 (100,000); on the worst case the 802.1ad/802.1Q and \
eight-header walk is most of it and the /48 filter replaces a trie walk that grew with the \
list. Next cut, not made here: the action in the port array's value (one map read for port \
and action), which needs a pin layout change.

";
