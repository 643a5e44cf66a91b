//! The DNS allowlist wired to the real XDP program, as the daemon wires it: a [`DnsEngine`]
//! task publishes the wanted allowlist, the [`Rig`] applies it to a loaded [`Filter`] through
//! the [`Enforcer`]. Plus SYNs run through the program with BPF_PROG_TEST_RUN, and second
//! handles on the allowlist maps for watching them from another thread.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapInfo, lpm_trie::Key};
use filter_common::{Action, BlockMask, FamilyCounters, map_names};
use filter_user::{
    cidr::Cidr,
    dns::{
        AllowlistUpdate, DnsEngine, DnsStats, Dnssec, Enforcer, HickoryResolve, HostName,
        RefreshPolicy, Resolve, state_file::StateFile,
    },
    filter::Filter,
};
use tokio::{sync::watch, task::JoinHandle};

pub use crate::program::{XDP_DROP, XDP_PASS};
use crate::{
    frames::Frame,
    program::{RunOptions, load_filter, test_run},
};

/// An engine asking `server` (with a short query timeout) about `names`, with `statics` as the
/// static prefixes and the state file in `state_dir` (none without).
pub fn engine(
    server: SocketAddr,
    names: &[&str],
    statics: &[&str],
    policy: RefreshPolicy,
    state_dir: Option<&Path>,
) -> DnsEngine<HickoryResolve> {
    engine_with(server, names, statics, policy, state_dir, &Dnssec::Off)
}

/// As [`engine`], with DNSSEC validation set as `dnssec` says.
pub fn engine_with(
    server: SocketAddr,
    names: &[&str],
    statics: &[&str],
    policy: RefreshPolicy,
    state_dir: Option<&Path>,
    dnssec: &Dnssec,
) -> DnsEngine<HickoryResolve> {
    let resolver = HickoryResolve::new(&[server], Some(Duration::from_millis(400)), dnssec)
        .expect("building the resolver");
    DnsEngine::new(
        resolver,
        policy,
        &self::names(names),
        &cidrs(statics),
        state_dir.map(StateFile::in_dir),
    )
}

/// Test names as the engine takes them.
pub fn names(list: &[&str]) -> BTreeSet<HostName> {
    list.iter().map(|n| n.parse().expect("test name")).collect()
}

pub fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
    list.iter().map(|c| c.parse().expect("test CIDR")).collect()
}

/// A loaded filter driven by a DNS engine task.
pub struct Rig {
    pub filter: Filter,
    pub enforcer: Enforcer,
    rx: watch::Receiver<AllowlistUpdate>,
    task: JoinHandle<()>,
    /// The latest counters the engine published.
    pub stats: DnsStats,
    /// Every allowlist the map was synced to, with when.
    pub history: Vec<(Instant, BTreeSet<Cidr>)>,
    pub started: Instant,
}

impl Rig {
    /// As the daemon starts: load (port 25 protected), restore the state file, fill the map,
    /// pick the action, then start the engine task. Call inside a tokio runtime.
    pub fn start<R: Resolve>(engine: DnsEngine<R>, strict: bool) -> Rig {
        Rig::start_with(engine, Action::Drop, strict)
    }

    /// As [`Rig::start`], with `action` as the configured (`--action`) action.
    pub fn start_with<R: Resolve>(mut engine: DnsEngine<R>, action: Action, strict: bool) -> Rig {
        crate::root::require_root();
        // The allowlist and the action come from the enforcer, as in the daemon.
        let mut filter = load_filter(&BTreeSet::from([25]), &[], None)
            .unwrap_or_else(|error| panic!("{error:#}"));
        engine.restore();
        let initial = engine.wanted();
        let enforcer = Enforcer::start(&mut filter, &initial, action, strict).expect("first fill");
        let (tx, rx) = watch::channel(AllowlistUpdate::default());
        let task = tokio::spawn(engine.run(tx));
        let started = Instant::now();
        Rig {
            filter,
            enforcer,
            rx,
            task,
            stats: DnsStats::default(),
            history: vec![(started, initial)],
            started,
        }
    }

    /// The allowlist as the kernel map holds it.
    pub fn allowlist(&self) -> BTreeSet<Cidr> {
        self.filter
            .allowlist
            .entries()
            .expect("reading the allowlist")
    }

    /// Applies the engine's updates until `done(map, stats)` holds; panics after `timeout`.
    /// Returns the time waited.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&BTreeSet<Cidr>, &DnsStats) -> bool,
    ) -> Duration {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.allowlist(), &self.stats) {
                return start.elapsed();
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    changed.expect("the DNS engine task ended");
                    self.apply();
                }
                _ = tokio::time::sleep_until(deadline) => panic!(
                    "timed out after {timeout:?} waiting for {what}: map {:?}, stats {:?}",
                    self.allowlist(),
                    self.stats
                ),
            }
        }
    }

    /// Applies the engine's updates for `duration`, checking `invariant` on the map after each.
    pub async fn hold(
        &mut self,
        what: &str,
        duration: Duration,
        invariant: impl Fn(&BTreeSet<Cidr>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + duration;
        loop {
            let map = self.allowlist();
            assert!(invariant(&map), "{what} broken: map {map:?}");
            tokio::select! {
                changed = self.rx.changed() => {
                    changed.expect("the DNS engine task ended");
                    self.apply();
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    fn apply(&mut self) {
        let update = self.rx.borrow_and_update().clone();
        self.stats = update.stats;
        self.enforcer
            .apply(&mut self.filter, &update.wanted)
            .expect("applying the allowlist");
        self.history.push((Instant::now(), update.wanted));
    }

    pub fn action(&self) -> Action {
        self.enforcer.action()
    }

    /// Runs one SYN from `src` to port 25 through the program; returns the XDP action.
    pub fn syn(&self, src: IpAddr) -> u32 {
        let frame = Frame::tcp_from(src, 25, crate::frames::SYN).bytes();
        let options = RunOptions {
            output: false,
            ..RunOptions::default()
        };
        test_run(self.filter.program.xdp().expect("program"), &frame, options)
            .unwrap_or_else(|error| panic!("{error:#}"))
            .action
    }

    /// The program's counters, all families summed.
    pub fn counters(&self) -> FamilyCounters {
        self.filter.maps.counters.read().expect("counters").total()
    }

    /// Stops the engine task (the filter stays loaded until the rig drops).
    pub fn stop_engine(&self) {
        self.task.abort();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A second handle on one of the maps the program reads, found through the program's map ids,
/// for reading it from another thread while the rig updates it.
fn program_map(filter: &Filter, name: &str) -> Map {
    let ids = filter
        .program
        .xdp()
        .expect("program")
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .expect("the kernel reports map ids");
    for id in ids {
        let info = MapInfo::from_id(id).expect("map info");
        if info.name_as_str() == Some(name) {
            return Map::from_map_data(MapData::from_id(id).expect("map by id")).expect("map type");
        }
    }
    panic!("the program uses no map named {name}");
}

/// The allowlist as the program reads it for host entries: the IPv4 block masks
/// ([`filter_common::map_names::ALLOW_V4_MASKS`]) and the IPv6 trie
/// ([`filter_common::map_names::ALLOW_V6`]).
pub struct AllowlistView {
    v4: HashMap<MapData, u32, BlockMask>,
    v6: LpmTrie<MapData, [u8; 16], u8>,
}

impl AllowlistView {
    pub fn of(filter: &Filter) -> Self {
        AllowlistView {
            v4: HashMap::try_from(program_map(filter, map_names::ALLOW_V4_MASKS))
                .expect("a hash of block masks"),
            v6: LpmTrie::try_from(program_map(filter, map_names::ALLOW_V6))
                .expect("an LPM trie with IPv6 keys"),
        }
    }

    /// Whether the host `addr` is allowlisted through a host entry (/32 in its block's mask,
    /// /128 in the trie).
    pub fn holds(&self, addr: IpAddr) -> bool {
        // Exact lookups: every entry the tests use is a host entry, so a hit means this one.
        match addr {
            IpAddr::V4(addr) => {
                let bits = addr.to_bits();
                let last = bits & 0xff;
                self.v4
                    .get(&(bits >> 8), 0)
                    .is_ok_and(|mask| mask[(last / 64) as usize] >> (last % 64) & 1 != 0)
            }
            IpAddr::V6(addr) => self.v6.get(&Key::new(128, addr.octets()), 0).is_ok(),
        }
    }
}
