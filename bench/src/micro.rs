//! Micro benchmark: the per-packet cost of each XDP program, per traffic class, through the
//! kernel's BPF_PROG_TEST_RUN (the program runs `repeat` times on one frame in the kernel; the
//! kernel reports the average time per run).
//!
//! Caveat, stated in the report: repeating one frame keeps the maps' cache lines hot, so this
//! is the cost of the instructions and lookups with a warm cache; a real flood of random
//! sources also misses the cache on large maps. The macro benchmark measures that side.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};
use aya::{Ebpf, programs::Xdp};
use filter_user::{cidr::Cidr, filter::Filter};
use serde::Serialize;
use test_kit::{
    netns::{self, Netns},
    program::{RunOptions, XDP_DROP, load_filter, test_run},
};

use crate::{
    BENCH_OBJECT,
    stats::Summary,
    traffic::{self, Class},
};
/// SCHED_FIFO priority of the measuring thread (see `crate::set_fifo`).
const MEASURE_PRIORITY: i32 = 30;

#[derive(Clone, Debug)]
pub struct MicroOptions {
    /// Runs per frame in one BPF_PROG_TEST_RUN call.
    pub repeat: u32,
    /// Repetitions of the whole measurement (median and spread are over these).
    pub reps: usize,
    /// Distinct frames of each class (their average is one sample).
    pub frames_per_class: usize,
    /// Allowlist sizes to load mxguard with.
    pub sizes: Vec<usize>,
    pub seed: u64,
}

/// One program on one traffic class.
#[derive(Clone, Debug, Serialize)]
pub struct MicroRow {
    pub program: String,
    pub class: String,
    /// Nanoseconds per packet.
    pub ns: Summary,
    /// Share of the class's frames the program dropped (a sanity check of the set-up).
    pub drop_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MicroResults {
    pub repeat: u32,
    pub reps: usize,
    pub frames_per_class: usize,
    pub programs: Vec<ProgramInfo>,
    pub rows: Vec<MicroRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramInfo {
    pub name: String,
    pub description: String,
}

/// BPF instructions of a loaded program as the verifier left them (`bpftool prog dump
/// xlated`): map lookups inlined, dead branches gone.
fn translated_insns(program: &Xdp) -> anyhow::Result<u32> {
    let size = program
        .info()
        .context("reading the program's info")?
        .size_translated()
        .context("the kernel reports no translated size")?;
    Ok(size / 8)
}

impl MicroResults {
    pub fn row(&self, program: &str, class: &str) -> Option<&MicroRow> {
        self.rows
            .iter()
            .find(|row| row.program == program && row.class == class)
    }
}

pub const EMPTY: &str = "empty XDP";
pub const XDP_FILTER: &str = "xdp-filter";

pub fn mxguard_name(size: usize, fast_path: bool) -> String {
    if fast_path {
        format!("mxguard {size}")
    } else {
        format!("mxguard {size} filters off")
    }
}

/// How a program is run: through aya (programs this process loaded) or through `bpftool prog
/// run` (xdp-filter's program, loaded by xdp-filter itself and known by its id).
enum Runner<'a> {
    Aya(&'a Xdp),
    Bpftool { id: u32, dir: &'a Path },
}

impl Runner<'_> {
    /// Runs `frame` `repeat` times; returns the program's verdict and ns per run.
    fn run(
        &self,
        class: usize,
        index: usize,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, f64)> {
        match self {
            Runner::Aya(program) => {
                // The verdict is all that is checked; no copy of the frame back.
                let options = RunOptions {
                    repeat,
                    output: false,
                };
                let run = test_run(program, frame, options)?;
                Ok((run.action, run.duration.as_nanos() as f64))
            }
            Runner::Bpftool { id, dir } => {
                let path = frame_file(dir, class, index);
                if !path.exists() {
                    std::fs::write(&path, frame)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                let output = netns::run(Command::new("bpftool").args([
                    "prog",
                    "run",
                    "id",
                    &id.to_string(),
                    "data_in",
                    path.to_str().context("non-UTF-8 temp path")?,
                    "repeat",
                    &repeat.to_string(),
                ]))?;
                parse_bpftool(&output)
            }
        }
    }
}

fn frame_file(dir: &Path, class: usize, index: usize) -> PathBuf {
    dir.join(format!("c{class}-f{index}.bin"))
}

/// Parses `Return value: 2, duration (average): 35ns`.
fn parse_bpftool(output: &str) -> anyhow::Result<(u32, f64)> {
    let line = output
        .lines()
        .find(|line| line.starts_with("Return value:"))
        .ok_or_else(|| anyhow!("unexpected bpftool prog run output: {output:?}"))?;
    let value = line
        .trim_start_matches("Return value:")
        .split(',')
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no return value in {line:?}"))?;
    let ns = line
        .rsplit(':')
        .next()
        .and_then(|d| d.trim().trim_end_matches("ns").parse().ok())
        .ok_or_else(|| anyhow!("no duration in {line:?}"))?;
    Ok((value, ns))
}

/// xdp-filter from xdp-tools, loaded by its own tool on a veth in a namespace of ours, set up
/// as close to mxguard's rule as it can express. It cannot match TCP flags nor prefixes nor
/// make exceptions to a port rule, so the closest is: policy allow, deny TCP destination port
/// 25, plus source addresses in its (exact-match) address map. It therefore drops every TCP
/// segment to port 25, relays included: a cost comparison, not a replacement.
pub struct XdpFilterSetup {
    netns: Netns,
    pub prog_id: u32,
}

const XF_IFACE: &str = "xf0";

impl XdpFilterSetup {
    pub fn new() -> anyhow::Result<Self> {
        crate::ensure_bpffs()?;
        let netns = Netns::new("xf")?;
        netns::veth(&netns, XF_IFACE, &netns, "xf1")?;
        // Built before loading, so a failure below still unloads (and unpins) on drop.
        netns::on_signal_cleanup(&netns, &["xdp-filter", "unload", XF_IFACE]);
        let mut setup = XdpFilterSetup { netns, prog_id: 0 };
        let xdp_filter = |args: &[&str]| -> anyhow::Result<String> {
            netns::run(setup.netns.command("xdp-filter").args(args))
        };
        xdp_filter(&[
            "load",
            "-m",
            "native",
            "-p",
            "allow",
            "-f",
            "tcp,ipv4,ipv6",
            XF_IFACE,
        ])
        .context("loading xdp-filter (xdp-tools)")?;
        xdp_filter(&["port", "25", "-m", "dst", "-p", "tcp"])?;
        for address in ["203.0.113.66", "203.0.113.67", "2001:db8:bad::66"] {
            xdp_filter(&["ip", address, "-m", "src"])?;
        }
        setup.prog_id = attached_prog_id(&setup.netns, XF_IFACE)?;
        Ok(setup)
    }
}

impl Drop for XdpFilterSetup {
    fn drop(&mut self) {
        // Its maps are pinned in bpffs (global, not per namespace): unload removes them.
        let _ = netns::run(self.netns.command("xdp-filter").args(["unload", XF_IFACE]));
    }
}

/// The id of the XDP program attached to `iface` in `netns`, from `ip -j link`.
pub fn attached_prog_id(netns: &Netns, iface: &str) -> anyhow::Result<u32> {
    let json = netns.ip(&["-j", "link", "show", "dev", iface])?;
    let value: serde_json::Value = serde_json::from_str(&json).context("parsing ip -j link")?;
    value[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .ok_or_else(|| anyhow!("no XDP program attached to {iface}: {json}"))
}

/// Loads mxguard with port 25 protected and `allow` allowlisted.
pub fn load_mxguard(allow: &[Cidr]) -> anyhow::Result<Filter> {
    load_filter(&BTreeSet::from([traffic::SMTP]), allow, None).context("loading mxguard")
}

pub fn run(
    options: &MicroOptions,
    classes: &[Class],
    xdp_filter: bool,
) -> anyhow::Result<MicroResults> {
    let mut bench = Ebpf::load(BENCH_OBJECT).context("loading the reference programs")?;
    let empty: &mut Xdp = bench
        .program_mut("bench_pass")
        .context("no bench_pass program")?
        .try_into()?;
    empty.load().context("loading bench_pass")?;
    let empty: &Xdp = bench
        .program("bench_pass")
        .context("no bench_pass program")?
        .try_into()?;

    let mut filters = Vec::new();
    for &size in &options.sizes {
        eprintln!("bench: loading mxguard with {size} prefixes");
        filters.push((size, load_mxguard(&traffic::allowlist(size, options.seed))?));
    }
    let xf = if xdp_filter {
        Some(XdpFilterSetup::new()?)
    } else {
        None
    };
    let tmp = std::env::temp_dir().join(format!("mxbench-frames-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let _cleanup = RemoveDir(tmp.clone());

    let mut programs = vec![ProgramInfo {
        name: EMPTY.into(),
        description: "returns XDP_PASS without reading the frame: the test-run floor".into(),
    }];
    let insns = match filters.first() {
        Some((_, filter)) => translated_insns(filter.program.xdp()?)?,
        None => 0,
    };
    for &size in &options.sizes {
        programs.push(ProgramInfo {
            name: mxguard_name(size, true),
            description: format!(
                "mxguard ({insns} BPF instructions after the verifier), port 25, {size} prefixes: block bitmaps, then the exact IPv4 block maps or the IPv6 /48 filter and trie"
            ),
        });
        programs.push(ProgramInfo {
            name: mxguard_name(size, false),
            description: format!(
                "mxguard, port 25, {size} prefixes, fast-path filters all ones: every protected SYN reaches the IPv4 block maps or the IPv6 trie"
            ),
        });
    }
    if xf.is_some() {
        programs.push(ProgramInfo {
            name: XDP_FILTER.into(),
            description: "xdp-filter (xdp-tools): policy allow, deny TCP dst port 25, 3 source addresses in its deny map".into(),
        });
    }

    // The kernel runs each test on the calling thread: pin it and keep unrelated work off it
    // while measuring (the machine may be shared), then give the CPU back.
    crate::pin_current_thread(0)?;
    crate::set_fifo(0, MEASURE_PRIORITY);
    let measured = measure_all(
        options,
        classes,
        &programs,
        &mut filters,
        empty,
        xf.as_ref(),
        &tmp,
    );
    crate::set_fifo(0, 0);
    crate::unpin_current_thread()?;
    let (samples, drops) = measured?;
    let mut rows = Vec::new();
    for (program_index, program) in programs.iter().enumerate() {
        for (class_index, class) in classes.iter().enumerate() {
            rows.push(MicroRow {
                program: program.name.clone(),
                class: class.name.clone(),
                ns: Summary::of(&samples[program_index][class_index]),
                drop_share: drops[program_index][class_index],
            });
        }
    }
    if rows.is_empty() {
        bail!("no micro measurements");
    }
    Ok(MicroResults {
        repeat: options.repeat,
        reps: options.reps,
        frames_per_class: options.frames_per_class,
        programs,
        rows,
    })
}

type Samples = (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>);

/// samples[program][class] = one mean per repetition; drops[program][class] = share dropped.
fn measure_all(
    options: &MicroOptions,
    classes: &[Class],
    programs: &[ProgramInfo],
    filters: &mut [(usize, Filter)],
    empty: &Xdp,
    xf: Option<&XdpFilterSetup>,
    tmp: &Path,
) -> anyhow::Result<Samples> {
    let mut samples = vec![vec![Vec::new(); classes.len()]; programs.len()];
    let mut drops = vec![vec![0f64; classes.len()]; programs.len()];
    for rep in 0..options.reps {
        eprintln!("bench: micro repetition {}/{}", rep + 1, options.reps);
        // Interleaved, so slow drift on a shared machine spreads over every program alike.
        for (class_index, class) in classes.iter().enumerate() {
            let frames: Vec<&Vec<u8>> =
                class.frames.iter().take(options.frames_per_class).collect();
            for (program_index, program) in programs.iter().enumerate() {
                let runner = if program.name == EMPTY {
                    Runner::Aya(empty)
                } else if program.name == XDP_FILTER {
                    Runner::Bpftool {
                        id: xf.map(|x| x.prog_id).unwrap_or_default(),
                        dir: tmp,
                    }
                } else {
                    let (size, filter) = filters
                        .iter_mut()
                        .find(|(size, _)| {
                            program.name == mxguard_name(*size, true)
                                || program.name == mxguard_name(*size, false)
                        })
                        .context("program without a filter")?;
                    let fast_path = program.name == mxguard_name(*size, true);
                    filter.allowlist.set_fast_path(fast_path);
                    Runner::Aya(filter.program.xdp()?)
                };
                let mut total = 0.0;
                let mut dropped = 0usize;
                for (index, frame) in frames.iter().enumerate() {
                    let (verdict, ns) = runner
                        .run(class_index, index, frame, options.repeat)
                        .with_context(|| format!("{} on {}", program.name, class.name))?;
                    total += ns;
                    dropped += usize::from(verdict == XDP_DROP);
                }
                samples[program_index][class_index].push(total / frames.len() as f64);
                drops[program_index][class_index] = dropped as f64 / frames.len() as f64;
            }
        }
    }
    Ok((samples, drops))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpftool_output() {
        assert_eq!(
            parse_bpftool("Return value: 2, duration (average): 35ns\n").unwrap(),
            (2, 35.0)
        );
        assert!(parse_bpftool("garbage").is_err());
    }
}
