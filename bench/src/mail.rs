//! Mail under a SYN flood: a real Postfix accepts mail from Postfix's own `smtp-source` while a
//! spoofed SYN flood hits port 25, and each contender in turn stands in front of it. The figure
//! is accepted mails per second, as a ratio to the same run's no-flood baseline and to an XDP
//! floor in the same attach mode.
//!
//! The veth pitfall: on veth, the receiving side's work runs on the CPU that sent the frame, so
//! a flood's cost would land on the attacker's core and the victim would never feel it. Here
//! the receiving veth steers every frame to the victim's CPU with RPS (as a NIC's interrupt
//! would put it there), Postfix and smtp-source are pinned to that CPU, and the flood generator
//! runs alone on the other one. RPS does not move native XDP, which veth runs in its NAPI poll
//! before RPS, on whichever CPU scheduled that poll; in the native cases veth's NAPI runs as a
//! thread pinned to the victim's CPU instead (docs/benchmarks.md explains what that costs).
//!
//! The flood comes from the project's replayer (AF_PACKET, one core) and, as an independent
//! cross-check, from Debian's hping3 through the sending namespace's IP stack. Kernel run-time
//! statistics (BPF_ENABLE_STATS) give each XDP program's real per-frame cost under the flood,
//! next to its BPF_PROG_TEST_RUN figure, and prove the flood reached the program.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use filter_user::cidr::Cidr;
use serde::Serialize;
use test_kit::{
    netns::{self, Netns},
    postfix::{Postfix, PostfixConfig, Transport, instance_pids},
    program::{RunOptions, test_run},
};

use crate::{
    BENCH_OBJECT,
    flood::{self, Installed},
    replay::Replayer,
    report::Target,
    stats::Summary,
    traffic::{self, Rng, SERVER_V4, SMTP},
};

/// The filtering service's relay that sends the mail (inside `traffic::RELAYS`' first prefix;
/// bench-ebpf's `bench_floor` passes exactly this source).
pub const RELAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The sending namespace's own address on the link.
const LINK_PEER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The flood's spoofed sources: 203.0.113.1-254, a block no allowlisted prefix touches.
const FLOOD_NET: [u8; 3] = [203, 0, 113];
/// hping3 spoofs one documentation source (its --rand-source would use the whole space).
const HPING_SOURCE: &str = "203.0.113.77";
const FLOOD_FRAMES: usize = 4096;
const RECIPIENT: &str = Postfix::RECIPIENT;
const SENDER: &str = "load@relay.mail-scanning.test";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum MailCase {
    /// No flood: the baseline.
    NoFlood,
    /// The flood, nothing in front of Postfix (SYN cookies answer it).
    Nothing,
    IptablesRecipe,
    Nftables,
    /// `bench_floor`: drops every IPv4 frame not from the relay, passes ARP: the least an
    /// XDP program can do while mail still arrives.
    FloorNative,
    FloorGeneric,
    MxguardNative,
    MxguardGeneric,
}

impl MailCase {
    pub const ALL: [MailCase; 8] = [
        MailCase::NoFlood,
        MailCase::Nothing,
        MailCase::IptablesRecipe,
        MailCase::Nftables,
        MailCase::FloorNative,
        MailCase::FloorGeneric,
        MailCase::MxguardNative,
        MailCase::MxguardGeneric,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MailCase::NoFlood => "no flood",
            MailCase::Nothing => "nothing",
            MailCase::IptablesRecipe => "iptables recipe",
            MailCase::Nftables => "nftables set",
            MailCase::FloorNative => "XDP drop-all native",
            MailCase::FloorGeneric => "XDP drop-all generic",
            MailCase::MxguardNative => "mxguard native",
            MailCase::MxguardGeneric => "mxguard generic",
        }
    }

    /// The floor in this case's mode: netfilter runs on the victim's CPU like generic XDP.
    fn floor(self) -> Option<MailCase> {
        match self {
            MailCase::NoFlood | MailCase::Nothing => None,
            MailCase::FloorNative | MailCase::MxguardNative => Some(MailCase::FloorNative),
            _ => Some(MailCase::FloorGeneric),
        }
    }

    fn floor_mode(self) -> Option<XdpMode> {
        match self {
            MailCase::FloorNative => Some(XdpMode::Driver),
            MailCase::FloorGeneric => Some(XdpMode::Skb),
            _ => None,
        }
    }

    /// The veth flood benchmark's contender of the same name, whose set-up this reuses.
    fn flood_case(self) -> Option<flood::Case> {
        match self {
            MailCase::Nothing => Some(flood::Case::Nothing),
            MailCase::IptablesRecipe => Some(flood::Case::IptablesRecipe),
            MailCase::Nftables => Some(flood::Case::Nftables),
            MailCase::MxguardNative => Some(flood::Case::MxguardNative),
            MailCase::MxguardGeneric => Some(flood::Case::MxguardGeneric),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Generator {
    /// The project's AF_PACKET replayer (`replay.rs`).
    Replayer,
    /// Debian's hping3 (`-S --flood`), through the sending namespace's IP stack.
    Hping3,
}

impl Generator {
    pub fn label(self) -> &'static str {
        match self {
            Generator::Replayer => "replayer",
            Generator::Hping3 => "hping3",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MailOptions {
    /// Messages smtp-source sends per run (the rate is measured over them).
    pub messages: usize,
    /// Parallel SMTP sessions (one message per connection, as a relay opens them).
    pub sessions: usize,
    /// Message body length in bytes (`smtp-source -l`).
    pub message_len: usize,
    /// A run stops here even if smtp-source has not finished; the rate is then what was
    /// accepted so far.
    pub deadline: Duration,
    /// The replayer's rate in frames/s (None: as fast as one core sends).
    pub flood_rate: Option<f64>,
    /// Flood time before smtp-source starts.
    pub warmup: Duration,
    pub reps: usize,
    /// Runs per frame in the BPF_PROG_TEST_RUN figure.
    pub test_run_repeat: u32,
    pub seed: u64,
}

/// One case with one generator, over the repetitions. Failed set-ups keep their row.
#[derive(Clone, Debug, Serialize)]
pub struct MailRow {
    pub case: String,
    pub generator: Option<String>,
    /// Why the case could not be measured (the row stays in the table).
    pub error: Option<String>,
    pub mails_per_s: Option<Summary>,
    /// Runs where smtp-source did not finish before the deadline.
    pub cut_short: usize,
    /// Flood frames per second the generator sent (generator side).
    pub offered_pps: Option<Summary>,
    /// Frames per second the victim's veth took in (its rx_packets).
    pub received_pps: Option<Summary>,
    /// Share of the window the victim's CPU spent in softirq (receive work, the flood's
    /// included when RPS put it there).
    pub victim_softirq: Option<Summary>,
    /// TCP segments the relay retransmitted per accepted mail: mail's own frames lost on the
    /// way in (a full queue ahead of the filter) cost retransmission timeouts.
    pub retransmits_per_mail: Option<Summary>,
    /// Frames per second the XDP program ran on (kernel run-time statistics).
    pub xdp_runs_pps: Option<Summary>,
    /// run_time_ns / run_cnt under the real flood.
    pub xdp_ns_per_run: Option<Summary>,
    /// The same program's BPF_PROG_TEST_RUN ns per run on the flood's frames.
    pub test_run_ns: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MailResults {
    pub victim_cpu: usize,
    pub generator_cpu: usize,
    pub messages: usize,
    pub sessions: usize,
    pub message_len: usize,
    pub deadline_s: f64,
    /// The replayer's paced rate, frames/s (None: as fast as it can).
    pub flood_rate: Option<f64>,
    pub reps: usize,
    pub postfix_version: String,
    pub hping3_version: String,
    /// How the kernel's run-time statistics were turned on.
    pub bpf_stats: String,
    pub rows: Vec<MailRow>,
}

impl MailResults {
    pub fn row(&self, case: MailCase, generator: Option<Generator>) -> Option<&MailRow> {
        self.rows.iter().find(|row| {
            row.case == case.label() && row.generator.as_deref() == generator.map(|g| g.label())
        })
    }

    fn samples(&self, case: MailCase, generator: Option<Generator>) -> Option<&[f64]> {
        Some(&self.row(case, generator)?.mails_per_s.as_ref()?.samples)
    }

    /// mails/s of `case` over `to`'s, as the median of the per-repetition ratios: every
    /// repetition runs each case once, within a minute or two, so a slow change in what else
    /// the machine runs cancels out of the ratio (the rows' medians alone do not).
    fn ratio(&self, case: MailCase, to: MailCase, generator: Option<Generator>) -> Option<f64> {
        let to_generator = if to == MailCase::NoFlood {
            None
        } else {
            generator
        };
        let (rates, bases) = (
            self.samples(case, generator)?,
            self.samples(to, to_generator)?,
        );
        let median = |values: &[f64]| Summary::of(values).median;
        let pairs: Vec<f64> = if rates.len() == bases.len() {
            rates
                .iter()
                .zip(bases)
                .filter_map(|(rate, base)| ratio_of(*rate, *base))
                .collect()
        } else {
            ratio_of(median(rates), median(bases)).into_iter().collect()
        };
        (!pairs.is_empty()).then(|| median(&pairs))
    }

    /// The cases that could not be measured, for a loud exit after the report is written.
    pub fn failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter_map(|row| {
                let error = row.error.as_ref()?;
                let generator = row.generator.as_deref().unwrap_or("-");
                Some(format!("{} ({generator}): {error}", row.case))
            })
            .collect()
    }
}

/// The goals for this section (with the replayer's flood, the heavier one).
pub fn targets(results: &MailResults) -> Vec<Target> {
    let generator = Some(Generator::Replayer);
    let mut targets = vec![Target::new(
        "mail: mxguard generic ≥ 0.95× XDP drop-all generic (mails/s under the flood)".into(),
        results.ratio(MailCase::MxguardGeneric, MailCase::FloorGeneric, generator),
        0.95,
        false,
        "accepted mails/s under the replayer's flood, median of the per-repetition ratios",
    )];
    for case in [MailCase::MxguardGeneric, MailCase::MxguardNative] {
        targets.push(Target::new(
            format!(
                "mail: {} ≥ 2× iptables recipe (mails/s under the flood)",
                case.label()
            ),
            results.ratio(case, MailCase::IptablesRecipe, generator),
            2.0,
            false,
            "accepted mails/s under the replayer's flood, median of the per-repetition ratios",
        ));
    }
    targets
}

/// The victim and the outside world: Postfix in `mx`, the relay and the flood in `out`, one
/// veth between them (the mail server's NIC).
struct MailLab {
    // Declared first, so it is dropped (stopped) before its namespace goes.
    postfix: Postfix,
    mx: Netns,
    out: Netns,
    mx_if: String,
    out_if: String,
    mx_mac: [u8; 6],
    out_mac: [u8; 6],
    victim_cpu: usize,
    generator_cpu: usize,
}

impl MailLab {
    fn new(victim_cpu: usize, generator_cpu: usize) -> anyhow::Result<MailLab> {
        let mx = Netns::new("mailmx")?;
        let out = Netns::new("mailout")?;
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let (mx_if, out_if) = (format!("mm{tag}"), format!("mo{tag}"));
        netns::veth(&mx, &mx_if, &out, &out_if)?;
        mx.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", &mx_if])?;
        out.ip(&["addr", "add", &format!("{LINK_PEER}/24"), "dev", &out_if])?;
        out.ip(&["addr", "add", &format!("{RELAY}/32"), "dev", &out_if])?;
        // The relay's mail leaves from its own address, which the allowlists hold.
        out.ip(&[
            "route",
            "replace",
            "192.0.2.0/24",
            "dev",
            &out_if,
            "src",
            &RELAY.to_string(),
        ])?;
        mx.ip(&["route", "add", &format!("{RELAY}/32"), "dev", &mx_if])?;
        // Answers to spoofed sources (SYN cookies, RSTs, REJECTs) are built and routed as on a
        // real server, then discarded here instead of flowing back into the sender.
        mx.ip(&["route", "add", "blackhole", "default"])?;
        for key in [
            "net.ipv4.conf.all.rp_filter".to_string(),
            "net.ipv4.conf.default.rp_filter".to_string(),
            format!("net.ipv4.conf.{mx_if}.rp_filter"),
        ] {
            mx.sysctl(&key, "0")?;
        }
        // Tens of thousands of short SMTP connections in a few minutes: room for the relay's
        // ports in TIME_WAIT.
        out.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        out.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let mx_mac = flood::mac(&mx, &mx_if)?;
        let out_mac = flood::mac(&out, &out_if)?;
        // Permanent neighbours: a drop-all that ate ARP would otherwise silently starve hping3
        // of its neighbour entry, and the flood would stop without an error.
        let text = |mac: [u8; 6]| {
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        out.ip(&[
            "neigh",
            "replace",
            &SERVER_V4.to_string(),
            "lladdr",
            &text(mx_mac),
            "dev",
            &out_if,
            "nud",
            "permanent",
        ])?;
        for peer in [RELAY, LINK_PEER] {
            mx.ip(&[
                "neigh",
                "replace",
                &peer.to_string(),
                "lladdr",
                &text(out_mac),
                "dev",
                &mx_if,
                "nud",
                "permanent",
            ])?;
        }
        // RPS: the victim's receive work (netfilter, TCP, generic XDP) on the victim's CPU, as
        // the NIC's interrupt would put it, whoever sent the frame.
        let mask = format!("{:x}", 1u64 << victim_cpu);
        netns::run(
            Command::new("ip")
                .args(["netns", "exec", mx.name(), "sh", "-c"])
                .arg(format!(
                    "echo {mask} > /sys/class/net/{mx_if}/queues/rx-0/rps_cpus"
                )),
        )
        .with_context(|| format!("steering {mx_if}'s receive work to CPU {victim_cpu} (RPS)"))?;

        let postfix = PostfixConfig::new((IpAddr::V4(SERVER_V4), SMTP).into())
            .netns(&mx)
            .transport(Transport::Discard)
            .start()
            .context("starting Postfix (apt-get install postfix, or cargo xtask setup)")?;
        // On SIGINT/SIGTERM the namespaces go; Postfix must not outlive them.
        let config_dir = postfix.config_dir().display().to_string();
        netns::on_signal_cleanup(&mx, &["postfix", "-c", &config_dir, "abort"]);
        if let Some(dir) = postfix.config_dir().parent() {
            netns::on_signal_cleanup(&mx, &["rm", "-rf", &dir.display().to_string()]);
        }
        // Every process of the instance; the ones the master forks later inherit its CPU.
        for pid in instance_pids(&postfix.config_dir()) {
            crate::pin_thread(pid, victim_cpu)
                .with_context(|| format!("pinning Postfix process {pid}"))?;
        }
        Ok(MailLab {
            postfix,
            mx,
            out,
            mx_if,
            out_if,
            mx_mac,
            out_mac,
            victim_cpu,
            generator_cpu,
        })
    }

    /// Installs what stands in front of Postfix for `case`.
    fn install(&self, case: MailCase, allow: &[Cidr]) -> anyhow::Result<Guard> {
        if let Some(flood_case) = case.flood_case() {
            let guard = Guard::Flood(flood::install(flood_case, &self.mx, &self.mx_if, allow)?);
            if case == MailCase::MxguardNative {
                pin_napi(&self.mx, &self.mx_if, self.victim_cpu)?;
            }
            return Ok(guard);
        }
        let Some(mode) = case.floor_mode() else {
            return Ok(Guard::Flood(Installed::None));
        };
        let mut ebpf = Box::new(Ebpf::load(BENCH_OBJECT).context("loading bench-ebpf")?);
        let program: &mut Xdp = ebpf
            .program_mut("bench_floor")
            .context("no bench_floor program")?
            .try_into()?;
        program.load().context("loading bench_floor")?;
        let iface = self.mx_if.clone();
        let link = self
            .mx
            .enter(|| program.attach(&iface, mode))?
            .with_context(|| format!("attaching bench_floor ({mode:?})"))?;
        let guard = Guard::Floor {
            ebpf,
            netns: self.mx.name().to_owned(),
            link: Some(link),
        };
        if mode == XdpMode::Driver {
            pin_napi(&self.mx, &self.mx_if, self.victim_cpu)?;
        }
        Ok(guard)
    }

    /// Frames of the flood: SYNs to port 25 from the flood block, random ports and sequence
    /// numbers, addressed to the victim's veth.
    fn flood_frames(&self, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(seed ^ 0x6d61_696c);
        (0..FLOOD_FRAMES)
            .map(|_| {
                let source = flood_source(1 + rng.below(254) as u8);
                let mut frame = traffic::syn(source, SMTP, &mut rng).bytes();
                frame[..6].copy_from_slice(&self.mx_mac);
                frame[6..12].copy_from_slice(&self.out_mac);
                frame
            })
            .collect()
    }

    /// (rx_packets, rx_dropped) of the victim's veth, read by a thread inside its namespace.
    fn rx_counters(&self) -> anyhow::Result<(u64, u64)> {
        let label = format!("{}:", self.mx_if);
        let text = self
            .mx
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?
            .context("reading /proc/thread-self/net/dev")?;
        let fields: Vec<u64> = text
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(label.as_str()))
                    .then(|| fields.filter_map(|f| f.parse().ok()).collect())
            })
            .ok_or_else(|| anyhow!("no {label} in /proc/net/dev"))?;
        // bytes packets errs drop ...
        match fields.as_slice() {
            [_, packets, _, dropped, ..] => Ok((*packets, *dropped)),
            _ => bail!("odd /proc/net/dev line for {label}"),
        }
    }

    /// Tcp RetransSegs of the relay's namespace (/proc/net/snmp, read from inside it).
    fn relay_retransmits(&self) -> anyhow::Result<u64> {
        let text = self
            .out
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
            .context("reading /proc/thread-self/net/snmp")?;
        let mut tcp = text.lines().filter(|line| line.starts_with("Tcp:"));
        let (names, values) = (tcp.next(), tcp.next());
        names
            .zip(values)
            .and_then(|(names, values)| {
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(name, _)| *name == "RetransSegs")
                    .and_then(|(_, value)| value.parse().ok())
            })
            .ok_or_else(|| anyhow!("no Tcp RetransSegs in /proc/net/snmp"))
    }

    /// smtp-source on the victim's CPU, `messages` mails over `sessions` connections at a
    /// time, stopped at `deadline`. Returns (accepted, seconds, finished).
    fn send_mail(&self, options: &MailOptions) -> anyhow::Result<(usize, f64, bool)> {
        let before = accepted(&self.postfix);
        let mut command = self.out.command("taskset");
        command
            .args(["-c", &self.victim_cpu.to_string(), "smtp-source"])
            .args(["-s", &options.sessions.to_string()])
            .args(["-m", &options.messages.to_string()])
            .args(["-l", &options.message_len.to_string()])
            .args([
                "-f",
                SENDER,
                "-t",
                RECIPIENT,
                "-M",
                "relay.mail-scanning.test",
            ])
            .arg(format!("{SERVER_V4}:{SMTP}"));
        let started = Instant::now();
        let mut child = ChildGuard::spawn(command, "smtp-source")?;
        let finished = child.wait_until(started + options.deadline)?;
        let elapsed = started.elapsed().as_secs_f64();
        if let Some(status) = finished
            && !status.success()
        {
            bail!(
                "smtp-source failed ({status}): {}\nPostfix log:\n{}",
                child.stderr(),
                self.postfix.log_tail()
            );
        }
        // Postfix logs through postlogd, a moment behind its 250 replies.
        let want = before + options.messages;
        let settle = Instant::now() + Duration::from_secs(3);
        let mut count = accepted(&self.postfix);
        while finished.is_some() && count < want && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(20));
            count = accepted(&self.postfix);
        }
        if finished.is_some() && count < want {
            bail!(
                "smtp-source finished but Postfix logged {} of {} mails\n{}",
                count - before,
                options.messages,
                self.postfix.log_tail()
            );
        }
        Ok((count - before, elapsed, finished.is_some()))
    }
}

/// Native XDP on veth runs in veth's NAPI poll, on whichever CPU scheduled it: mostly the
/// attacker's, the victim's when the relay's own frame came first. Threaded NAPI pinned to the
/// victim's CPU, at real-time priority so it preempts Postfix as a NIC's softirq would, puts
/// native XDP where a NIC driver's runs.
fn pin_napi(netns: &Netns, iface: &str, cpu: usize) -> anyhow::Result<()> {
    flood::threaded_napi(netns, iface, cpu).map(drop)
}

/// Mails the instance accepted so far: cleanup logs one message-id line per accepted mail.
fn accepted(postfix: &Postfix) -> usize {
    postfix
        .log()
        .lines()
        .filter(|line| line.contains("postfix/cleanup[") && line.contains(": message-id="))
        .count()
}

/// What stands in front of Postfix for one case; removed on drop.
enum Guard {
    Flood(Installed),
    Floor {
        ebpf: Box<Ebpf>,
        netns: String,
        link: Option<XdpLinkId>,
    },
}

impl Guard {
    fn program(&self) -> Option<anyhow::Result<&Xdp>> {
        match self {
            Guard::Flood(Installed::Mxguard(filter, _)) => Some(filter.program.xdp()),
            Guard::Flood(_) => None,
            Guard::Floor { ebpf, .. } => Some(
                ebpf.program("bench_floor")
                    .context("no bench_floor program")
                    .and_then(|p| p.try_into().context("bench_floor is not XDP")),
            ),
        }
    }

    /// (run_cnt, run_time_ns) of the attached XDP program, if there is one.
    fn run_stats(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let Some(program) = self.program() else {
            return Ok(None);
        };
        let info = program?.info().context("reading the program's info")?;
        Ok(Some((info.run_count(), info.run_time().as_nanos() as u64)))
    }

    /// BPF_PROG_TEST_RUN ns per run over the flood's first frames.
    fn test_run_ns(&self, frames: &[Vec<u8>], repeat: u32) -> anyhow::Result<Option<f64>> {
        let Some(program) = self.program() else {
            return Ok(None);
        };
        let program = program?;
        let sample = &frames[..frames.len().min(16)];
        let mut total = 0.0;
        for frame in sample {
            let options = RunOptions {
                repeat,
                output: false,
            };
            total += test_run(program, frame, options)?.duration.as_nanos() as f64;
        }
        Ok(Some(total / sample.len() as f64))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Floor { ebpf, netns, link } = self {
            let program: Option<&mut Xdp> = ebpf
                .program_mut("bench_floor")
                .and_then(|p| p.try_into().ok());
            if let (Some(program), Some(link)) = (program, link.take()) {
                let _ = netns::enter_named(netns, || program.detach(link));
            }
        }
    }
}

/// A child process that dies with us: killed and reaped on drop, and sent SIGKILL by the
/// kernel if this process dies first (a flood generator must not outlive its run).
struct ChildGuard {
    child: Child,
    what: &'static str,
}

impl ChildGuard {
    fn spawn(mut command: Command, what: &'static str) -> anyhow::Result<ChildGuard> {
        // SAFETY: prctl is async-signal-safe and touches nothing but the child's own state.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what} ({command:?})"))?;
        Ok(ChildGuard { child, what })
    }

    /// Waits for the exit until `deadline`; None if still running then.
    fn wait_until(
        &mut self,
        deadline: Instant,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        loop {
            if let Some(status) = self.child.try_wait().context(self.what)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the child (SIGINT first: hping3 prints its statistics then) and returns
    /// everything it wrote.
    fn stop(mut self) -> anyhow::Result<String> {
        if self.child.try_wait().context(self.what)?.is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            if self
                .wait_until(Instant::now() + Duration::from_secs(2))?
                .is_none()
            {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
        Ok(self.output())
    }

    fn output(&mut self) -> String {
        use std::io::Read as _;
        let mut text = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut text);
        }
        text + &self.stderr()
    }

    fn stderr(&mut self) -> String {
        use std::io::Read as _;
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running flood.
enum Flood {
    Replayer(Replayer),
    Hping3 { child: ChildGuard, started: Instant },
}

impl Flood {
    fn start(
        generator: Generator,
        lab: &MailLab,
        frames: &[Vec<u8>],
        rate: Option<f64>,
    ) -> anyhow::Result<Flood> {
        match generator {
            Generator::Replayer => Ok(Flood::Replayer(Replayer::start_paced(
                format!("/run/netns/{}", lab.out.name()),
                lab.out_if.clone(),
                frames.to_vec(),
                lab.generator_cpu,
                rate,
            )?)),
            Generator::Hping3 => {
                let mut command = lab.out.command("taskset");
                command
                    .args(["-c", &lab.generator_cpu.to_string(), "hping3", "-q"])
                    .args(["-I", &lab.out_if, "-S", "-p", "25", "--flood"])
                    .args(["-a", HPING_SOURCE])
                    .arg(SERVER_V4.to_string());
                Ok(Flood::Hping3 {
                    child: ChildGuard::spawn(command, "hping3")?,
                    started: Instant::now(),
                })
            }
        }
    }

    /// Frames sent so far, where the generator can say while it runs.
    fn sent(&self) -> Option<u64> {
        match self {
            Flood::Replayer(replayer) => Some(replayer.sent()),
            Flood::Hping3 { .. } => None,
        }
    }

    /// Stops the flood; for hping3, its own count over its whole run, in frames/s.
    fn stop(self) -> anyhow::Result<Option<f64>> {
        match self {
            Flood::Replayer(replayer) => replayer.finish().context("replayer").map(|_| None),
            Flood::Hping3 { mut child, started } => {
                if let Some(status) = child.child.try_wait().context("hping3")? {
                    bail!("hping3 exited early ({status}): {}", child.output());
                }
                let elapsed = started.elapsed().as_secs_f64();
                let output = child.stop()?;
                let sent: u64 = output
                    .lines()
                    .find_map(|line| line.strip_suffix_part(" packets transmitted"))
                    .and_then(|count| count.trim().parse().ok())
                    .ok_or_else(|| anyhow!("no packet count in hping3's output: {output:?}"))?;
                Ok(Some(sent as f64 / elapsed))
            }
        }
    }
}

/// `"N packets transmitted, ..."` → `"N"`.
trait StripPart {
    fn strip_suffix_part(&self, marker: &str) -> Option<&str>;
}

impl StripPart for str {
    fn strip_suffix_part(&self, marker: &str) -> Option<&str> {
        self.find(marker).map(|at| &self[..at])
    }
}

struct Sample {
    mails_per_s: f64,
    finished: bool,
    offered_pps: Option<f64>,
    received_pps: Option<f64>,
    victim_softirq: f64,
    retransmits_per_mail: f64,
    xdp_runs_pps: Option<f64>,
    xdp_ns_per_run: Option<f64>,
    test_run_ns: Option<f64>,
}

fn measure(
    lab: &MailLab,
    case: MailCase,
    generator: Option<Generator>,
    allow: &[Cidr],
    frames: &[Vec<u8>],
    options: &MailOptions,
) -> anyhow::Result<Sample> {
    let guard = lab.install(case, allow)?;
    let test_run_ns = guard.test_run_ns(frames, options.test_run_repeat)?;
    let flood = generator
        .map(|generator| Flood::start(generator, lab, frames, options.flood_rate))
        .transpose()?;
    if flood.is_some() {
        std::thread::sleep(options.warmup);
    }
    let window = Instant::now();
    let sent0 = flood.as_ref().and_then(Flood::sent);
    let (rx0, _) = lab.rx_counters()?;
    let stats0 = guard.run_stats()?;
    let softirq0 = flood::softirq_ns(lab.victim_cpu)?;
    let retrans0 = lab.relay_retransmits()?;
    let (accepted, mail_s, finished) = lab.send_mail(options)?;
    let sent1 = flood.as_ref().and_then(Flood::sent);
    let (rx1, _) = lab.rx_counters()?;
    let stats1 = guard.run_stats()?;
    let softirq1 = flood::softirq_ns(lab.victim_cpu)?;
    let retrans1 = lab.relay_retransmits()?;
    let elapsed = window.elapsed().as_secs_f64();
    let hping_pps = flood.map(Flood::stop).transpose()?.flatten();
    drop(guard);

    let offered_pps = match (sent0, sent1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / elapsed),
        _ => hping_pps,
    };
    let received_pps = (rx1 - rx0) as f64 / elapsed;
    let (xdp_runs_pps, xdp_ns_per_run) = match (stats0, stats1) {
        (Some((cnt0, ns0)), Some((cnt1, ns1))) => {
            let runs = cnt1 - cnt0;
            if runs == 0 {
                bail!("the XDP program never ran: are run-time statistics on?");
            }
            (
                Some(runs as f64 / elapsed),
                Some((ns1 - ns0) as f64 / runs as f64),
            )
        }
        _ => (None, None),
    };
    if let Some(generator) = generator {
        // The flood must have reached the victim: mail alone is a few thousand frames/s.
        let arrived = xdp_runs_pps.unwrap_or(received_pps);
        if arrived < 5_000.0 {
            bail!(
                "the {} flood did not reach the victim ({arrived:.0} frames/s arrived)",
                generator.label()
            );
        }
    }
    Ok(Sample {
        mails_per_s: accepted as f64 / mail_s,
        finished,
        offered_pps,
        received_pps: Some(received_pps),
        victim_softirq: (softirq1 - softirq0) as f64 / (elapsed * 1e9),
        retransmits_per_mail: (retrans1 - retrans0) as f64 / accepted.max(1) as f64,
        xdp_runs_pps,
        xdp_ns_per_run,
        test_run_ns,
    })
}

/// The runs of one repetition: the baseline, then every flooded case with each generator.
fn plan() -> Vec<(MailCase, Option<Generator>)> {
    let mut plan = vec![(MailCase::NoFlood, None)];
    for generator in [Generator::Replayer, Generator::Hping3] {
        for case in MailCase::ALL.into_iter().skip(1) {
            plan.push((case, Some(generator)));
        }
    }
    plan
}

/// Runs the section. A case that cannot be set up keeps its row, with the error; a lab that
/// cannot be set up (no Postfix, one CPU) fails every row the same way.
pub fn run(options: &MailOptions) -> MailResults {
    let cpus = crate::online_cpus();
    let (generator_cpu, victim_cpu) = (0, cpus.saturating_sub(1));
    let plan = plan();
    let mut samples: Vec<Vec<Sample>> = plan.iter().map(|_| Vec::new()).collect();
    let mut errors: Vec<Option<String>> = plan.iter().map(|_| None).collect();
    let mut bpf_stats = String::from("not enabled");
    let setup = (|| -> anyhow::Result<(MailLab, OwnedFd)> {
        if cpus < 2 {
            bail!("needs two CPUs (the victim's and the generator's), found {cpus}");
        }
        for tool in ["smtp-source", "hping3", "taskset", "postfix"] {
            which(tool)?;
        }
        // The kernel's switch behind kernel.bpf_stats_enabled, held by this fd: it goes off
        // by itself when the fd closes, even if the benchmark is killed.
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        let lab = MailLab::new(victim_cpu, generator_cpu)?;
        Ok((lab, stats))
    })();
    match setup {
        Err(error) => {
            let message = format!("set-up failed: {error:#}");
            eprintln!("bench: mail: {message}");
            errors.iter_mut().for_each(|e| *e = Some(message.clone()));
        }
        Ok((lab, _stats)) => {
            bpf_stats = "BPF_ENABLE_STATS (run_time_ns, run_cnt) held for the section".into();
            let allow = allowlist();
            let frames = lab.flood_frames(options.seed);
            for rep in 0..options.reps {
                for (index, &(case, generator)) in plan.iter().enumerate() {
                    if errors[index].is_some() {
                        continue;
                    }
                    let generator_label = generator.map(|g| g.label()).unwrap_or("-");
                    eprintln!(
                        "bench: mail {}/{} {}, flood {generator_label}",
                        rep + 1,
                        options.reps,
                        case.label()
                    );
                    match measure(&lab, case, generator, &allow, &frames, options) {
                        Ok(sample) => samples[index].push(sample),
                        Err(error) => {
                            eprintln!("bench: mail: {} FAILED: {error:#}", case.label());
                            errors[index] = Some(format!("{error:#}"));
                        }
                    }
                }
            }
        }
    }
    let rows = plan
        .iter()
        .zip(samples)
        .zip(errors)
        .map(|((&(case, generator), samples), error)| row(case, generator, &samples, error))
        .collect();
    MailResults {
        victim_cpu,
        generator_cpu,
        messages: options.messages,
        sessions: options.sessions,
        message_len: options.message_len,
        deadline_s: options.deadline.as_secs_f64(),
        flood_rate: options.flood_rate,
        reps: options.reps,
        postfix_version: netns::run(Command::new("postconf").args(["-d", "-h", "mail_version"]))
            .map(|v| format!("Postfix {}", v.trim()))
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        hping3_version: netns::run(Command::new("hping3").arg("--version"))
            .map(|v| {
                let line = v.lines().next().unwrap_or_default();
                // "hping3 version 3.0.0-alpha-2 ($Id: release.h,v 1.4 ...$)"
                line.split(" ($Id")
                    .next()
                    .unwrap_or(line)
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|e| format!("unknown ({e:#})")),
        bpf_stats,
        rows,
    }
}

fn row(
    case: MailCase,
    generator: Option<Generator>,
    samples: &[Sample],
    error: Option<String>,
) -> MailRow {
    let pick = |f: fn(&Sample) -> Option<f64>| {
        let values: Vec<f64> = samples.iter().filter_map(f).collect();
        (!values.is_empty() && error.is_none()).then(|| Summary::of(&values))
    };
    MailRow {
        case: case.label().into(),
        generator: generator.map(|g| g.label().into()),
        mails_per_s: pick(|s| Some(s.mails_per_s)),
        cut_short: samples.iter().filter(|s| !s.finished).count(),
        offered_pps: pick(|s| s.offered_pps),
        received_pps: pick(|s| s.received_pps),
        victim_softirq: pick(|s| Some(s.victim_softirq)),
        retransmits_per_mail: pick(|s| Some(s.retransmits_per_mail)),
        xdp_runs_pps: pick(|s| s.xdp_runs_pps),
        xdp_ns_per_run: pick(|s| s.xdp_ns_per_run),
        test_run_ns: pick(|s| s.test_run_ns).map(|s| s.median),
        error,
    }
}

/// The allowlist every filter holds: the relay prefixes outside the flood's block.
fn allowlist() -> Vec<Cidr> {
    traffic::RELAYS
        .iter()
        .map(|relay| relay.parse::<Cidr>().expect("relay prefix"))
        .filter(|cidr| {
            let flood = flood_source(0);
            // Two prefixes overlap exactly when one holds the other's first address.
            !(cidr.contains(flood) || (cidr.prefix_len() >= 24 && flood_block(cidr.addr())))
        })
        .collect()
}

/// Host `host` of the flood's block.
fn flood_source(host: u8) -> IpAddr {
    let [a, b, c] = FLOOD_NET;
    IpAddr::V4(Ipv4Addr::new(a, b, c, host))
}

fn flood_block(address: IpAddr) -> bool {
    matches!(address, IpAddr::V4(v4) if v4.octets()[..3] == FLOOD_NET)
}

fn which(tool: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir: std::path::PathBuf| dir.join(tool).is_file());
    if found {
        Ok(())
    } else {
        bail!("{tool} not found: run `cargo xtask setup` (it installs postfix and hping3)")
    }
}

fn cell(summary: &Option<Summary>, scale: f64, digits: usize) -> String {
    match summary {
        Some(s) if s.samples.len() > 1 => {
            format!("{:.*} ±{:.0}%", digits, s.median / scale, s.spread_pct())
        }
        Some(s) => format!("{:.*}", digits, s.median / scale),
        None => "–".into(),
    }
}

/// `rate / base`; mail that got through where the other case let none is better than any finite
/// ratio.
fn ratio_of(rate: f64, base: f64) -> Option<f64> {
    match (rate > 0.0, base > 0.0) {
        (_, true) => Some(rate / base),
        (true, false) => Some(f64::INFINITY),
        (false, false) => None,
    }
}

/// A share as a percentage, with the spread in points.
fn percent(summary: &Option<Summary>) -> String {
    match summary {
        Some(s) if s.samples.len() > 1 => format!(
            "{:.0}% ({:.0}-{:.0})",
            s.median * 100.0,
            s.min * 100.0,
            s.max * 100.0
        ),
        Some(s) => format!("{:.0}%", s.median * 100.0),
        None => "–".into(),
    }
}

fn ratio_cell(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) if r.is_infinite() => "∞ (none there)".into(),
        Some(r) => format!("{r:.2}×"),
        None => "–".into(),
    }
}

/// The table: one line per case and generator.
pub fn table(results: &MailResults) -> String {
    let mut out = String::from(
        "| flood | in front of Postfix | mails/s | ×no flood | ×drop-all same mode | flood offered kframes/s | received kframes/s | victim CPU in softirq | relay retransmits per mail | XDP runs kframes/s | XDP ns/run (real flood) | ns/run (test run) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &results.rows {
        let case = MailCase::ALL
            .into_iter()
            .find(|c| c.label() == row.case)
            .unwrap_or(MailCase::NoFlood);
        let generator = [Generator::Replayer, Generator::Hping3]
            .into_iter()
            .find(|g| Some(g.label()) == row.generator.as_deref());
        let flood = row.generator.as_deref().unwrap_or("none");
        if let Some(error) = &row.error {
            let _ = writeln!(
                out,
                "| {flood} | {} | **FAILED**: {} | | | | | | | | | |",
                row.case,
                error.lines().next().unwrap_or_default().replace('|', "\\|")
            );
            continue;
        }
        let short = if row.cut_short > 0 {
            format!(" ({} cut at the deadline)", row.cut_short)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {flood} | {} | {}{short} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.case,
            cell(&row.mails_per_s, 1.0, 0),
            ratio_cell(results.ratio(case, MailCase::NoFlood, generator)),
            ratio_cell(case.floor().and_then(|f| results.ratio(case, f, generator))),
            cell(&row.offered_pps, 1000.0, 0),
            cell(&row.received_pps, 1000.0, 0),
            percent(&row.victim_softirq),
            cell(&row.retransmits_per_mail, 1.0, 2),
            cell(&row.xdp_runs_pps, 1000.0, 0),
            cell(&row.xdp_ns_per_run, 1.0, 0),
            row.test_run_ns
                .map(|ns| format!("{ns:.0}"))
                .unwrap_or_else(|| "–".into()),
        );
    }
    out
}

/// The terminal summary of the section.
pub fn terminal(results: &MailResults) -> String {
    format!(
        "\nMail under flood ({} × {} mails over {} sessions, median of {}; victim CPU {}, generator CPU {})\n\n{}",
        results.reps,
        results.messages,
        results.sessions,
        results.reps,
        results.victim_cpu,
        results.generator_cpu,
        table(results)
    )
}

/// The docs/benchmarks.md section.
pub fn markdown(results: &MailResults) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Mail under a SYN flood\n");
    let _ = writeln!(
        out,
        "A real {} accepts mail for `{RECIPIENT}` into its `discard` transport, in its own network namespace \
         behind one veth (the mail server's NIC, {SERVER_V4}). In a second namespace, the filtering service's \
         relay ({RELAY}) runs Postfix's `smtp-source`: {} mails of {} bytes, {} sessions at a time, one mail per \
         connection; the figure is accepted mails per second (Postfix's log counts them), a run stopping after \
         {:.0} s at the latest. While it sends, a spoofed SYN flood to port 25 from 203.0.113.0/24 comes from the \
         same namespace: the project's AF_PACKET replayer ({FLOOD_FRAMES} distinct frames from random ports, {}), \
         or, as an independent cross-check, {} (`hping3 -S -p 25 --flood -a {HPING_SOURCE}`, through the \
         kernel's stack, as fast as it goes). Every filter holds the relays' prefixes outside that block. \
         Median of {} runs per line (spread: (max − min) / median), all cases interleaved in one run, one \
         Postfix for the section; every ratio is the median of the per-repetition ratios (each repetition \
         runs every case once, so a change in what else the machine runs between repetitions cancels).\n",
        results.postfix_version,
        results.messages,
        results.message_len,
        results.sessions,
        results.deadline_s,
        match results.flood_rate {
            Some(rate) => format!(
                "paced to {:.0} kframes/s, the same flood for every case",
                rate / 1000.0
            ),
            None => "as fast as one core sends".into(),
        },
        results.hping3_version,
        results.reps,
    );
    let _ = writeln!(
        out,
        "**The veth pitfall.** On veth the receiver's work runs on the CPU that sent the frame: left alone, the \
         flood's whole cost (netfilter, TCP, the SYN cookies) lands on the attacker's core and Postfix hardly \
         notices. A NIC's interrupt puts that work on the server's CPU instead. Here RPS does: the receiving \
         veth's `rx-0/rps_cpus` sends every frame to CPU {victim}, where Postfix and smtp-source are pinned \
         (`taskset`), while the generator runs alone on CPU {generator}. That moves netfilter, the TCP stack \
         and generic XDP, which run after RPS, in softirq on the victim's CPU as with a NIC.\n\n\
         RPS does not move native XDP: veth runs it in its NAPI poll, before RPS, on whichever CPU scheduled \
         that poll, mostly the generator's and sometimes the victim's (when the relay's own frame found it \
         idle). Left so, a frame dropped natively costs the victim nothing or something, by chance: in trial \
         runs mxguard native kept 0.6× of drop-all native's mails/s with the poll drifting onto the victim's \
         CPU more often. So in the native cases veth's NAPI runs as a thread (`threaded`) pinned to CPU {victim} \
         at real-time priority, preempting Postfix as a NIC's softirq would: the victim pays for every frame \
         native XDP looks at. What veth adds and a NIC does not: the thread is woken for each burst the \
         generator sends (a context switch, and on this VM an inter-processor interrupt, where a NIC's \
         interrupt moderation batches), and native XDP on veth copies each AF_PACKET frame into a page before \
         the program runs. Both cost the victim per burst or frame whatever the program, so native rows are \
         compared with drop-all native (the same costs), not with the generic rows; absolute native figures \
         understate what native XDP does on a NIC. The drop-all goal is judged on the generic rows, where \
         veth and a NIC differ least.\n",
        victim = results.victim_cpu,
        generator = results.generator_cpu,
    );
    let _ = writeln!(
        out,
        "- **drop-all** is `bench_floor` (bench-ebpf): it drops every IPv4 frame not from {RELAY} and passes \
         ARP and IPv6, the least an XDP program can do while mail still arrives (a literal drop-all would \
         drop the mail, and one that drops ARP starves a kernel-stack generator of its neighbour entry; the \
         namespaces also hold permanent neighbour entries). ×drop-all compares with the floor in the same \
         attach mode; netfilter rows compare with the generic floor, which also runs on the victim's CPU.\n\
         - **iptables recipe**: the source document's rules (NEW connections to 25 from the allowlist \
         accepted, the rest REJECTed, conntrack `state` match); **nftables set**: SYNs to 25 whose source is \
         not in an interval set dropped at prerouting, raw priority (both as in the veth flood above).\n\
         - **offered**: frames/s the generator sent during the mail window (hping3: its own count over its \
         whole run); **received**: the victim veth's rx_packets/s (frames the veth delivered; with native XDP \
         attached it counts what XDP passed); **XDP runs**: the program's run_cnt/s from the kernel's run-time \
         statistics ({}), which prove the flood reached the program; **XDP ns/run**: run_time_ns / run_cnt \
         under that flood, real cache behaviour included, next to BPF_PROG_TEST_RUN on 16 of the flood's \
         frames (one frame repeated, warm cache).\n",
        results.bpf_stats
    );
    out.push_str(&table(results));
    out.push_str(
        "\n**What bounds these figures.** The baseline is one CPU running all of Postfix (smtpd, cleanup, \
         qmgr, discard, postlogd) and the relay's smtp-source, on a machine that may be running other work \
         (see the spreads). Under the flood, what the victim's CPU spends on flood frames comes off that \
         (the softirq column; in the native rows the NAPI thread's time is not softirq and is not in it). A \
         frame XDP drops still costs the victim what veth costs per frame and per burst (the RPS hand-off \
         and its inter-processor interrupt; natively the thread's wake-up and the copy into a page), the same \
         for drop-all and mxguard, so ×drop-all isolates the program. ",
    );
    let share = |case: MailCase| -> Option<f64> {
        let row = results.row(case, Some(Generator::Replayer))?;
        Some(row.xdp_ns_per_run.as_ref()?.median * row.xdp_runs_pps.as_ref()?.median / 1e9)
    };
    if let (Some(mxguard), Some(floor)) = (
        share(MailCase::MxguardGeneric),
        share(MailCase::FloorGeneric),
    ) {
        let _ = write!(
            out,
            "The program itself, run time × runs per second under the replayer's flood, takes {:.1}% of the \
             victim's CPU for mxguard generic and {:.1}% for drop-all generic: a difference of {:.1} points of \
             one CPU, all that separates them (a point of the victim's CPU is worth about a percent of its \
             mails/s); mails/s tells the two apart only where its spread is smaller \
             than that. ",
            mxguard * 100.0,
            floor * 100.0,
            (mxguard - floor) * 100.0
        );
    }
    out.push_str(
        "Ratios compare cases of this run; absolute figures belong to the machine above.\n\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_holds_the_relay_but_not_the_flood() {
        let allow = allowlist();
        assert!(allow.iter().any(|c| c.contains(IpAddr::V4(RELAY))));
        for host in 0..=255 {
            let source = flood_source(host);
            assert!(!allow.iter().any(|c| c.contains(source)), "{source}");
        }
        // The relays' other prefixes stay (the IPv4 ones in 198.51.100.0/24, the IPv6 ones).
        assert_eq!(allow.len(), traffic::RELAYS.len() - 3, "{allow:?}");
        let hping: IpAddr = HPING_SOURCE.parse().unwrap();
        assert!(!allow.iter().any(|c| c.contains(hping)));
    }

    /// Results where every case failed to set up.
    fn failed_results() -> MailResults {
        let error = Some("set-up failed: hping3 not found".to_string());
        let rows = plan()
            .into_iter()
            .map(|(case, generator)| row(case, generator, &[], error.clone()))
            .collect::<Vec<_>>();
        MailResults {
            victim_cpu: 1,
            generator_cpu: 0,
            messages: 1,
            sessions: 1,
            message_len: 1,
            deadline_s: 1.0,
            flood_rate: None,
            reps: 1,
            postfix_version: String::new(),
            hping3_version: String::new(),
            bpf_stats: String::new(),
            rows,
        }
    }

    #[test]
    fn a_case_that_could_not_be_set_up_stays_in_the_table_and_fails_the_run() {
        let results = failed_results();
        let table = table(&results);
        for case in MailCase::ALL {
            assert!(
                table.contains(&format!("| {} | **FAILED**", case.label())),
                "{table}"
            );
        }
        assert_eq!(results.failures().len(), plan().len());
        assert!(targets(&results).iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn mail_where_the_other_case_had_none_is_an_unbounded_ratio() {
        let mut results = failed_results();
        let rate = |median: f64| {
            let mut row = row(MailCase::NoFlood, None, &[], None);
            row.mails_per_s = Some(Summary::of(&[median]));
            row
        };
        let generator = Some(Generator::Replayer.label().to_string());
        results.rows = vec![
            MailRow {
                case: MailCase::MxguardGeneric.label().into(),
                generator: generator.clone(),
                ..rate(120.0)
            },
            MailRow {
                case: MailCase::IptablesRecipe.label().into(),
                generator,
                ..rate(0.0)
            },
        ];
        let ratio = results.ratio(
            MailCase::MxguardGeneric,
            MailCase::IptablesRecipe,
            Some(Generator::Replayer),
        );
        assert_eq!(ratio, Some(f64::INFINITY));
        let goal = &targets(&results)[1];
        assert_eq!(goal.met, Some(true), "{goal:?}");
        assert_eq!(
            results.ratio(
                MailCase::IptablesRecipe,
                MailCase::MxguardGeneric,
                Some(Generator::Replayer)
            ),
            Some(0.0)
        );
    }

    #[test]
    fn ratios_pair_the_runs_of_one_repetition() {
        let mut results = failed_results();
        let rates = |case: MailCase, samples: &[f64]| {
            let mut row = row(case, Some(Generator::Replayer), &[], None);
            row.mails_per_s = Some(Summary::of(samples));
            row
        };
        // The machine slowed down in the third repetition: both cases lost alike.
        results.rows = vec![
            rates(MailCase::MxguardGeneric, &[100.0, 110.0, 20.0]),
            rates(MailCase::FloorGeneric, &[100.0, 100.0, 20.0]),
        ];
        let ratio = results
            .ratio(
                MailCase::MxguardGeneric,
                MailCase::FloorGeneric,
                Some(Generator::Replayer),
            )
            .unwrap();
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn every_case_runs_with_every_generator_and_the_baseline_once() {
        let plan = plan();
        assert_eq!(plan.len(), 1 + 2 * (MailCase::ALL.len() - 1));
        assert_eq!(plan[0], (MailCase::NoFlood, None));
    }
}
