//! Macro benchmark: a flood replayed at full speed from one namespace into another over a veth
//! pair, while the receiving namespace runs, in turn, each of the contenders.
//!
//! The receiver's veth has GRO on, so it receives through NAPI like a NIC driver. By default
//! the replayer and the receiver share one CPU: the replayer's send raises the receive softirq,
//! which runs right after it on that CPU, so frames/s is what one core does for sender plus
//! receiver, and the CPU's softirq time per frame is the receiver's own cost (XDP, netfilter,
//! the TCP stack, the replies it builds). `--threaded-receiver` instead moves the receiver to
//! a threaded NAPI thread on the other CPU and reads that thread's run time. Real-time priority
//! keeps unrelated work off both during a window, and a fresh pair of namespaces per case keeps
//! conntrack and rule state from leaking from one case into the next.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use filter_user::{cidr::Cidr, filter::Filter, links::AttachMode};
use serde::Serialize;
use test_kit::netns::{self, Netns};

use crate::{
    BENCH_OBJECT,
    micro::load_mxguard,
    replay::Replayer,
    stats::Summary,
    traffic::{self, SERVER_V4, SERVER_V6},
};

/// SCHED_FIFO priorities: the receiving NAPI thread, and this process's main thread while it
/// reads counters (above the replayer, so window boundaries are read on time).
const RECEIVER_PRIORITY: i32 = 50;
const MEASURER_PRIORITY: i32 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Case {
    /// Nothing filters: the kernel's TCP stack answers every SYN (syncookies under a flood).
    Nothing,
    MxguardNative,
    MxguardGeneric,
    /// The source document's recipe: NEW connections to 25 accepted from the allowlist, the
    /// rest rejected, in the filter table's INPUT chain (conntrack `state` match).
    IptablesRecipe,
    /// SYNs to 25 not from the allowlist dropped in the raw table, before conntrack.
    IptablesRaw,
    /// nftables: SYNs to 25 whose source is not in an interval set dropped at prerouting,
    /// raw priority.
    Nftables,
    /// An XDP program that drops every frame: the ceiling.
    DropAll,
}

impl Case {
    pub const ALL: [Case; 7] = [
        Case::Nothing,
        Case::MxguardNative,
        Case::MxguardGeneric,
        Case::IptablesRecipe,
        Case::IptablesRaw,
        Case::Nftables,
        Case::DropAll,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::Nothing => "nothing",
            Case::MxguardNative => "mxguard native",
            Case::MxguardGeneric => "mxguard generic",
            Case::IptablesRecipe => "iptables recipe",
            Case::IptablesRaw => "iptables raw drop",
            Case::Nftables => "nftables set",
            Case::DropAll => "XDP drop-all",
        }
    }
}

#[derive(Clone, Debug)]
pub struct FloodOptions {
    /// Receiver in a threaded NAPI thread on its own CPU instead of softirq on the sender's.
    pub threaded_receiver: bool,
    pub warmup: Duration,
    pub duration: Duration,
    pub reps: usize,
    pub seed: u64,
}

/// One case on one traffic set, over the repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct FloodRow {
    pub case: String,
    pub traffic: String,
    /// Frames per second the replayer got into the sending veth.
    pub offered_pps: Summary,
    /// Frames per second that reached the receiver (its veth's rx counter).
    pub handled_pps: Summary,
    /// Receiver CPU time per received frame, in ns (the NAPI thread's run time).
    pub cpu_ns_per_packet: Summary,
    /// Share of the window the receiving thread was on its CPU (1.0 = saturated).
    pub receiver_busy: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct FloodResults {
    pub duration_s: f64,
    pub reps: usize,
    pub sender_cpu: usize,
    pub receiver_cpu: usize,
    /// How the receiver's CPU time is measured.
    pub receiver: String,
    pub iptables_version: String,
    pub nft_version: String,
    pub rows: Vec<FloodRow>,
}

impl FloodResults {
    pub fn row(&self, case: Case, traffic: &str) -> Option<&FloodRow> {
        self.rows
            .iter()
            .find(|row| row.case == case.label() && row.traffic == traffic)
    }
}

struct Sample {
    offered: f64,
    handled: f64,
    cpu_ns: f64,
    busy: f64,
}

/// Receiver namespace, sender namespace and the veth between them, set up for one case.
struct Topology {
    rx: Netns,
    tx: Netns,
    rx_if: String,
    tx_if: String,
    receiver: Receiver,
    _listener: TcpListener,
}

/// Where the receiver's work runs and how its CPU time is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Receiver {
    /// Threaded NAPI on its own CPU: the thread's run time from /proc/PID/schedstat.
    Threaded { pid: i32 },
    /// NAPI in softirq on the sender's CPU (no cross-CPU wake-ups): that CPU's softirq time
    /// from /proc/stat.
    Inline { cpu: usize },
}

impl Topology {
    fn new(threaded: bool, receiver_cpu: usize) -> anyhow::Result<Topology> {
        let tx = Netns::new("tx")?;
        let rx = Netns::new("rx")?;
        // Short, unique names: the NAPI thread is called napi/<iface>-<id> (15 chars kept).
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let (tx_if, rx_if) = (format!("mt{tag}"), format!("mr{tag}"));
        netns::veth(&tx, &tx_if, &rx, &rx_if)?;
        rx.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", &rx_if])?;
        rx.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            &rx_if,
            "nodad",
        ])?;
        // Replies to spoofed sources (SYN-ACK cookies, RSTs, REJECTs) are built and routed as
        // on a real server, then discarded here instead of flowing back into the sender.
        rx.ip(&["route", "add", "blackhole", "default"])?;
        rx.ip(&["-6", "route", "add", "blackhole", "default"])?;
        for key in [
            "net.ipv4.conf.all.rp_filter".to_string(),
            "net.ipv4.conf.default.rp_filter".to_string(),
            format!("net.ipv4.conf.{rx_if}.rp_filter"),
        ] {
            rx.sysctl(&key, "0")?;
        }
        // TSO off on the sender lets veth hand frames to the receiver's GRO/NAPI path.
        netns::run(
            tx.command("ethtool")
                .args(["-K", &tx_if, "tso", "off", "gso", "off"]),
        )
        .context("ethtool (sender offloads)")?;
        netns::run(rx.command("ethtool").args(["-K", &rx_if, "gro", "on"]))
            .context("ethtool (receiver GRO)")?;
        // The mail server: something listens on port 25 (SYN cookies answer the flood).
        let listener = rx
            .enter(|| TcpListener::bind(("::", traffic::SMTP)))?
            .context("listening on port 25 in the receiver")?;
        let receiver = if threaded {
            Receiver::Threaded {
                pid: threaded_napi(&rx, &rx_if, receiver_cpu)?,
            }
        } else {
            Receiver::Inline { cpu: receiver_cpu }
        };
        Ok(Topology {
            rx,
            tx,
            rx_if,
            tx_if,
            receiver,
            _listener: listener,
        })
    }

    /// rx_packets of the receiving veth, from /proc/thread-self/net/dev read by a thread inside
    /// the namespace (no child process: the CPUs are busy with real-time threads).
    fn rx_packets(&self) -> anyhow::Result<u64> {
        let iface = format!("{}:", self.rx_if);
        let text = self
            .rx
            .enter(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?
            .context("reading /proc/thread-self/net/dev")?;
        text.lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(iface.as_str())).then(|| fields.nth(1))?
            })
            .and_then(|packets| packets.parse().ok())
            .ok_or_else(|| anyhow!("no {iface} in /proc/net/dev"))
    }

    /// CPU time the receiver has used so far, in ns.
    fn receiver_cpu_ns(&self) -> anyhow::Result<u64> {
        match self.receiver {
            Receiver::Threaded { pid } => {
                let path = format!("/proc/{pid}/schedstat");
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                text.split_whitespace()
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow!("odd {path}: {text:?}"))
            }
            Receiver::Inline { cpu } => softirq_ns(cpu),
        }
    }
}

/// The MAC address of `iface` in `netns`.
pub(crate) fn mac(netns: &Netns, iface: &str) -> anyhow::Result<[u8; 6]> {
    let json = netns.ip(&["-j", "link", "show", "dev", iface])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("parsing ip -j link")?;
    let text = value[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow!("no MAC for {iface}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(mac)
}

/// Softirq time of `cpu` from /proc/stat (USER_HZ ticks, sampled by the scheduler tick when the
/// kernel has no IRQ time accounting: unbiased, about 1% over a few seconds).
pub(crate) fn softirq_ns(cpu: usize) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let label = format!("cpu{cpu}");
    let ticks: u64 = text
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(label.as_str())).then(|| fields.nth(6))?
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {label} softirq field in /proc/stat"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// Turns on threaded NAPI for `iface` and pins its thread to `cpu`; returns the thread's pid.
pub(crate) fn threaded_napi(netns: &Netns, iface: &str, cpu: usize) -> anyhow::Result<i32> {
    // A device's sysfs files are only visible in a sysfs mounted from its namespace, which
    // `ip netns exec` provides.
    let path = format!("/sys/class/net/{iface}/threaded");
    netns::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", netns.name(), "sh", "-c"])
            .arg(format!("echo 1 > {path}")),
    )
    .with_context(|| format!("enabling threaded NAPI on {iface}"))?;
    let prefix = format!("napi/{iface}-");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc")
            .context("reading /proc")?
            .flatten()
        {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                && comm.trim_end().starts_with(&prefix)
            {
                found.push(pid);
            }
        }
        match found.as_slice() {
            [pid] => {
                crate::pin_thread(*pid, cpu)
                    .with_context(|| format!("pinning {prefix}* to CPU {cpu}"))?;
                crate::set_fifo(*pid, RECEIVER_PRIORITY);
                return Ok(*pid);
            }
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            [] => bail!("no NAPI thread {prefix}* appeared"),
            many => bail!("several NAPI threads {prefix}*: {many:?} (one queue expected)"),
        }
    }
}

/// What a case installed; removed on drop (before the namespaces go).
pub(crate) enum Installed {
    None,
    Mxguard(Box<Filter>, String),
    Xdp(Box<Ebpf>, String, Option<XdpLinkId>),
}

/// Installs `case` on `iface` in the receiving namespace `rx` (the mail benchmark shares it).
pub(crate) fn install(
    case: Case,
    rx: &Netns,
    iface: &str,
    allow: &[Cidr],
) -> anyhow::Result<Installed> {
    let iface = iface.to_owned();
    let (v4, v6): (Vec<&Cidr>, Vec<&Cidr>) =
        allow.iter().partition(|c| matches!(c, Cidr::V4 { .. }));
    match case {
        Case::Nothing => Ok(Installed::None),
        Case::MxguardNative | Case::MxguardGeneric => {
            let mut filter = Box::new(load_mxguard(allow)?);
            let mode = if case == Case::MxguardNative {
                AttachMode::Native
            } else {
                AttachMode::Generic
            };
            rx.enter(|| filter.attach(&iface, mode))?
                .with_context(|| format!("attaching mxguard ({mode:?})"))?;
            Ok(Installed::Mxguard(filter, rx.name().to_owned()))
        }
        Case::DropAll => {
            let mut ebpf = Box::new(Ebpf::load(BENCH_OBJECT).context("loading bench-ebpf")?);
            let program: &mut Xdp = ebpf
                .program_mut("bench_drop")
                .context("no bench_drop")?
                .try_into()?;
            program.load().context("loading bench_drop")?;
            let link = rx
                .enter(|| program.attach(&iface, XdpMode::Driver))?
                .context("attaching drop-all (native)")?;
            Ok(Installed::Xdp(ebpf, rx.name().to_owned(), Some(link)))
        }
        Case::IptablesRecipe => {
            // The source document's rules: NEW connections to 25 from the allowlist, else REJECT.
            load_iptables(
                rx,
                &v4,
                &v6,
                "filter",
                "INPUT",
                "-m state --state NEW",
                "ACCEPT",
                "REJECT",
            )?;
            Ok(Installed::None)
        }
        Case::IptablesRaw => {
            load_iptables(
                rx,
                &v4,
                &v6,
                "raw",
                "PREROUTING",
                "--tcp-flags SYN,ACK SYN",
                "ACCEPT",
                "DROP",
            )?;
            Ok(Installed::None)
        }
        Case::Nftables => {
            let set = |list: &[&Cidr]| {
                list.iter()
                    .map(|c| format!("{}/{}", c.addr(), c.prefix_len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ruleset = format!(
                "table inet mxbench {{\n\
                 set allow4 {{ type ipv4_addr; flags interval; elements = {{ {} }} }}\n\
                 set allow6 {{ type ipv6_addr; flags interval; elements = {{ {} }} }}\n\
                 chain pre {{ type filter hook prerouting priority raw; policy accept;\n\
                 tcp dport 25 tcp flags & (syn | ack) == syn ip saddr != @allow4 drop\n\
                 tcp dport 25 tcp flags & (syn | ack) == syn ip6 saddr != @allow6 drop\n\
                 }}\n}}\n",
                set(&v4),
                set(&v6)
            );
            netns::run_with_input(rx.command("nft").args(["-f", "-"]), &ruleset)
                .context("nft -f -")?;
            Ok(Installed::None)
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Detach from inside the namespace (link-based attachments go with their fd anyway,
        // and deleting the namespace removes the veth and everything on it).
        match self {
            Installed::None => {}
            Installed::Mxguard(filter, netns) => {
                let _ = netns::enter_named(netns, || filter.links.detach_all());
            }
            Installed::Xdp(ebpf, netns, link) => {
                let program: Option<&mut Xdp> = ebpf
                    .program_mut("bench_drop")
                    .and_then(|p| p.try_into().ok());
                if let (Some(program), Some(link)) = (program, link.take()) {
                    let _ = netns::enter_named(netns, || program.detach(link));
                }
            }
        }
    }
}

fn measure(
    case: Case,
    frames: &[Vec<u8>],
    allow: &[Cidr],
    options: &FloodOptions,
    sender_cpu: usize,
    receiver_cpu: usize,
) -> anyhow::Result<Sample> {
    let threaded = sender_cpu != receiver_cpu;
    let topology = Topology::new(threaded, receiver_cpu)?;
    let installed = install(case, &topology.rx, &topology.rx_if, allow)?;
    let rx_mac = mac(&topology.rx, &topology.rx_if)?;
    let tx_mac = mac(&topology.tx, &topology.tx_if)?;
    let frames: Vec<Vec<u8>> = frames
        .iter()
        .map(|frame| {
            let mut frame = frame.clone();
            frame[..6].copy_from_slice(&rx_mac);
            frame[6..12].copy_from_slice(&tx_mac);
            frame
        })
        .collect();
    let replayer = Replayer::start(
        format!("/run/netns/{}", topology.tx.name()),
        topology.tx_if.clone(),
        frames,
        sender_cpu,
    )?;
    std::thread::sleep(options.warmup);
    crate::set_fifo(0, MEASURER_PRIORITY);
    let window = (|| -> anyhow::Result<_> {
        let start = Instant::now();
        let sent0 = replayer.sent();
        let rx0 = topology.rx_packets()?;
        let cpu0 = topology.receiver_cpu_ns()?;
        std::thread::sleep(options.duration);
        let sent1 = replayer.sent();
        let rx1 = topology.rx_packets()?;
        let cpu1 = topology.receiver_cpu_ns()?;
        Ok((
            start.elapsed().as_secs_f64(),
            sent1 - sent0,
            rx1 - rx0,
            cpu1 - cpu0,
        ))
    })();
    crate::set_fifo(0, 0);
    let (elapsed, sent, received, cpu) = window?;
    replayer.finish().context("replayer")?;
    drop(installed);
    drop(topology);
    let handled = received as f64;
    if handled == 0.0 {
        bail!("{}: the receiver got no frames", case.label());
    }
    Ok(Sample {
        offered: sent as f64 / elapsed,
        handled: handled / elapsed,
        cpu_ns: cpu as f64 / handled,
        busy: cpu as f64 / (elapsed * 1e9),
    })
}

/// Runs every case on every traffic set, `reps` times, cases interleaved within a repetition.
pub fn run(
    options: &FloodOptions,
    traffic: &[(String, Vec<Vec<u8>>)],
    cases: &[Case],
) -> anyhow::Result<FloodResults> {
    let cpus = crate::online_cpus();
    // Inline by default: on a VM, waking a receiver thread on another CPU costs an IPI per
    // burst, which then dominates every fast case alike.
    let (sender_cpu, receiver_cpu) = if options.threaded_receiver && cpus > 1 {
        (0, cpus - 1)
    } else {
        (cpus - 1, cpus - 1)
    };
    let allow = traffic::allowlist(traffic::RELAYS.len(), options.seed);
    let mut samples: Vec<Vec<Vec<Sample>>> = traffic
        .iter()
        .map(|_| cases.iter().map(|_| Vec::new()).collect())
        .collect();
    for rep in 0..options.reps {
        for (traffic_index, (name, frames)) in traffic.iter().enumerate() {
            for (case_index, &case) in cases.iter().enumerate() {
                eprintln!(
                    "bench: flood {}/{} {name}: {}",
                    rep + 1,
                    options.reps,
                    case.label()
                );
                let sample = measure(case, frames, &allow, options, sender_cpu, receiver_cpu)
                    .with_context(|| format!("flood of {name} against {}", case.label()))?;
                samples[traffic_index][case_index].push(sample);
            }
        }
    }
    let mut rows = Vec::new();
    for (traffic_index, (name, _)) in traffic.iter().enumerate() {
        for (case_index, case) in cases.iter().enumerate() {
            let s = &samples[traffic_index][case_index];
            let pick = |f: fn(&Sample) -> f64| Summary::of(&s.iter().map(f).collect::<Vec<_>>());
            rows.push(FloodRow {
                case: case.label().into(),
                traffic: name.clone(),
                offered_pps: pick(|s| s.offered),
                handled_pps: pick(|s| s.handled),
                cpu_ns_per_packet: pick(|s| s.cpu_ns),
                receiver_busy: pick(|s| s.busy),
            });
        }
    }
    let version = |program: &str| {
        netns::run(std::process::Command::new(program).arg("--version"))
            .or_else(|_| netns::run(std::process::Command::new(program).arg("-V")))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    Ok(FloodResults {
        duration_s: options.duration.as_secs_f64(),
        reps: options.reps,
        sender_cpu,
        receiver_cpu,
        receiver: if sender_cpu == receiver_cpu {
            "softirq on the sender's CPU (/proc/stat softirq time)".into()
        } else {
            "threaded NAPI on its own CPU (/proc/PID/schedstat)".into()
        },
        iptables_version: version("iptables"),
        nft_version: version("nft"),
        rows,
    })
}

/// Loads one iptables/ip6tables table: `match` SYNs to port 25 from each allowlisted prefix get
/// `allowed`, the rest `denied`.
#[allow(clippy::too_many_arguments)]
fn load_iptables(
    rx: &netns::Netns,
    v4: &[&Cidr],
    v6: &[&Cidr],
    table: &str,
    chain: &str,
    matcher: &str,
    allowed: &str,
    denied: &str,
) -> anyhow::Result<()> {
    let rules = |list: &[&Cidr]| {
        let mut text = format!("*{table}\n");
        for cidr in list {
            text += &format!(
                "-A {chain} -p tcp --dport 25 {matcher} -s {}/{} -j {allowed}\n",
                cidr.addr(),
                cidr.prefix_len()
            );
        }
        text += &format!("-A {chain} -p tcp --dport 25 {matcher} -j {denied}\nCOMMIT\n");
        text
    };
    netns::run_with_input(&mut rx.command("iptables-restore"), &rules(v4))
        .context("iptables-restore")?;
    netns::run_with_input(&mut rx.command("ip6tables-restore"), &rules(v6))
        .context("ip6tables-restore")?;
    Ok(())
}
