//! `cargo xtask bench`: how much mxguard costs per packet and how much of a SYN flood it
//! handles, side by side with an empty XDP program, xdp-filter, iptables, nftables and an XDP
//! drop-all, all measured in one run. See docs/benchmarks.md for results and method.

pub mod flood;
pub mod mail;
pub mod micro;
pub mod milter_cost;
pub mod pcap;
pub mod replay;
pub mod report;
pub mod stats;
pub mod traffic;

use anyhow::Context as _;
use test_kit::netns;

/// The reference programs (`bench-ebpf`: `bench_pass`, `bench_drop`, `bench_floor`), built by
/// `build.rs`.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-ebpf"));

/// Mounts bpffs on /sys/fs/bpf if it is not (xdp-filter pins its maps there).
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .context("reading /proc/self/mounts")?
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some("/sys/fs/bpf"));
    if !mounted {
        netns::run(std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
            .context("mounting bpffs on /sys/fs/bpf")?;
    }
    Ok(())
}

/// CPUs online (not the caller's affinity, which the micro benchmark narrows).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let count = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(count).unwrap_or(1).max(1)
}

/// Lets the calling thread run on every online CPU again.
pub fn unpin_current_thread() -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in 0..online_cpus() {
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("unpinning")
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    pin_thread(0, cpu)
}

/// Pins thread `tid` (0 = the caller) to `cpu`.
pub fn pin_thread(tid: i32, cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
        .with_context(|| format!("pinning thread {tid} to CPU {cpu}"))
}

/// Gives thread `tid` (0 = the caller) the real-time policy SCHED_FIFO at `priority`, or back
/// SCHED_OTHER with `priority` 0. The machine may be shared: during a measurement window the
/// replayer and the receiving thread must not wait behind unrelated work (the kernel still
/// keeps 5% of each CPU for others through RT throttling). Where real-time scheduling is not
/// allowed (e.g. a cgroup without RT budget) this warns and measures anyway, noisier.
pub fn set_fifo(tid: i32, priority: i32) {
    if let Err(error) = try_set_fifo(tid, priority) {
        eprintln!("bench: warning: {error:#}; measuring without real-time priority");
    }
}

fn try_set_fifo(tid: i32, priority: i32) -> anyhow::Result<()> {
    let policy = if priority > 0 {
        libc::SCHED_FIFO
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: param is a valid sched_param for the duration of the call.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sched_setscheduler({tid}, priority {priority})"));
    }
    Ok(())
}
