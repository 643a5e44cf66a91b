//! The DNS-driven allowlist against a real authoritative DNS server (hickory-server on
//! 127.0.0.1) and the real XDP program's maps. Short TTLs and refresh bounds keep every test
//! to a few seconds. Run as root.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use filter_common::{Action, Counter};
use filter_user::{
    cidr::Cidr,
    dns::{RefreshPolicy, state_file::StateFile},
};
use hickory_proto::rr::RecordType;
use test_kit::{
    dns_rig::{AllowlistView, Rig, XDP_DROP, XDP_PASS, cidrs, engine},
    dns_server::{Mode, TestDns},
    temp_dir::TempDir,
};

const MS: Duration = Duration::from_millis(1);
/// The XDP return value for a frame sent back out (the RST of the reject action).
const XDP_TX: u32 = 3;

fn policy(min_ms: u64, max_ms: u64, grace_ms: u64) -> RefreshPolicy {
    RefreshPolicy {
        min_refresh: Duration::from_millis(min_ms),
        max_refresh: Duration::from_millis(max_ms),
        stale_grace: Duration::from_millis(grace_ms),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

#[tokio::test]
async fn initial_fill_takes_ipv4_and_ipv6_and_asks_fully_qualified() {
    let dns = TestDns::start().await;
    dns.set(
        "relay.mx.test",
        &["192.0.2.10", "192.0.2.11", "2001:db8::10"],
        60,
    );
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &["198.51.100.0/24"],
            policy(1000, 60_000, 600_000),
            None,
        ),
        false,
    );
    let expected = cidrs(&[
        "198.51.100.0/24",
        "192.0.2.10",
        "192.0.2.11",
        "2001:db8::10",
    ]);
    let took = rig
        .wait_for("the first answer", Duration::from_secs(5), |map, _| {
            *map == expected
        })
        .await;
    eprintln!("initial fill took {took:?}");
    assert_eq!(
        rig.action(),
        Action::Drop,
        "static prefixes: dropping from the start"
    );

    // Exactly one A and one AAAA query, for the name as given plus the root dot.
    let mut seen: Vec<(String, RecordType)> = dns
        .seen()
        .into_iter()
        .map(|s| (s.name, s.record_type))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("relay.mx.test.".to_string(), RecordType::A),
            ("relay.mx.test.".to_string(), RecordType::AAAA),
        ]
    );

    // The program agrees: relay addresses pass, a stranger is dropped.
    for relay in ["192.0.2.10", "192.0.2.11", "2001:db8::10", "198.51.100.7"] {
        assert_eq!(rig.syn(ip(relay)), XDP_PASS, "{relay}");
    }
    assert_eq!(rig.syn(ip("203.0.113.5")), XDP_DROP);
    assert_eq!(rig.syn(ip("2001:db8::66")), XDP_DROP);
    let counters = rig.counters();
    assert_eq!(
        (
            counters.get(Counter::SynAllowed),
            counters.get(Counter::SynDropped)
        ),
        (4, 2)
    );
}

#[tokio::test]
async fn a_changed_record_set_is_applied_after_the_ttl_and_not_before_the_minimum() {
    let dns = TestDns::start().await;
    // TTL 1 s but a minimum refresh of 1.5 s: the minimum wins.
    dns.set("short.mx.test", &["192.0.2.20", "192.0.2.21"], 1);
    // TTL 2 s, between the minimum (1.5 s) and the maximum: the TTL wins.
    dns.set("ttl.mx.test", &["192.0.2.30"], 2);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["short.mx.test", "ttl.mx.test"],
            &[],
            policy(1500, 10_000, 60_000),
            None,
        ),
        false,
    );
    rig.wait_for("the first answers", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.20", "192.0.2.21", "192.0.2.30"])
    })
    .await;
    let filled = Instant::now();
    dns.set("short.mx.test", &["192.0.2.21", "192.0.2.22"], 1);
    dns.set("ttl.mx.test", &["192.0.2.31"], 2);

    let took = rig
        .wait_for("both changes", Duration::from_secs(6), |map, _| {
            *map == cidrs(&["192.0.2.21", "192.0.2.22", "192.0.2.31"])
        })
        .await;
    eprintln!("changes applied {took:?} after the first fill");

    // When each change reached the map, measured from the history of syncs.
    let first_with = |cidr: &str| {
        let cidr: Cidr = cidr.parse().unwrap();
        rig.history
            .iter()
            .find(|(_, wanted)| wanted.contains(&cidr))
            .map(|(at, _)| at.saturating_duration_since(filled))
            .expect("applied")
    };
    let short_change = first_with("192.0.2.22");
    let ttl_change = first_with("192.0.2.31");
    eprintln!("short.mx.test changed after {short_change:?}, ttl.mx.test after {ttl_change:?}");
    // The server's log is the ground truth for "not before": the second query of each name
    // came no earlier than its bound after the first.
    for (name, bound) in [("short.mx.test", 1500 * MS), ("ttl.mx.test", 2000 * MS)] {
        let seen = dns.seen_for(name);
        let a_queries: Vec<Instant> = seen
            .iter()
            .filter(|s| s.record_type == RecordType::A)
            .map(|s| s.at)
            .collect();
        assert!(a_queries.len() >= 2, "{name}: {seen:?}");
        let gap = a_queries[1] - a_queries[0];
        eprintln!("{name}: second A query {gap:?} after the first (bound {bound:?})");
        assert!(
            gap >= bound,
            "{name}: asked again after {gap:?}, bound {bound:?}"
        );
        // Jitter adds at most 1/16; scheduling on a loaded machine a little more.
        assert!(
            gap < bound + 1000 * MS,
            "{name}: asked again only after {gap:?}"
        );
    }
}

fn as_strs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn new_addresses_are_added_before_old_ones_are_removed() {
    // 1000 old and 1000 new IPv6 addresses plus one IPv4 and one IPv6 address in both sets:
    // each sync is about 2000 map operations, long enough for a reader on another thread to
    // look inside it. The answers are too big for UDP, so this also takes the TCP fallback.
    const N: u16 = 1000;
    let old: Vec<String> = (1..=N).map(|i| format!("2001:db8:1::{i:x}")).collect();
    let new: Vec<String> = (1..=N).map(|i| format!("2001:db8:2::{i:x}")).collect();
    let shared = ["192.0.2.41".to_string(), "2001:db8::41".to_string()];
    let old_set: Vec<String> = old.iter().chain(&shared).cloned().collect();
    let new_set: Vec<String> = new.iter().chain(&shared).cloned().collect();
    let (old_cidrs, new_cidrs) = (cidrs(&as_strs(&old_set)), cidrs(&as_strs(&new_set)));

    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &as_strs(&old_set), 1);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(300, 5000, 60_000),
            None,
        ),
        false,
    );
    rig.wait_for("the first answer", Duration::from_secs(10), |map, _| {
        *map == old_cidrs
    })
    .await;

    // The sync goes in sorted order: it adds 2001:db8:2::1 first and 2001:db8:2::3e8 last,
    // and removes 2001:db8:1::1 first. Add-before-remove means the last new address is in
    // before the first old one goes: the two are never both missing.
    let first_old = ip("2001:db8:1::1");
    let last_new = ip(&format!("2001:db8:2::{N:x}"));
    let view = AllowlistView::of(&rig.filter);
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, polls, inside) = (stop.clone(), polls.clone(), inside.clone());
        std::thread::spawn(move || {
            let mut violations = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let shared_in = [ip("192.0.2.41"), ip("2001:db8::41")]
                    .into_iter()
                    .all(|addr| view.holds(addr));
                // Three reads, not one snapshot: a reader preempted between two reads for a
                // whole sync could otherwise see the old address before it was re-added and
                // the new one after it was removed. Both absent at one instant means absent
                // on all three.
                let old_in = view.holds(first_old);
                let new_in = view.holds(last_new);
                let old_again = view.holds(first_old);
                if old_in && new_in {
                    inside.fetch_add(1, Ordering::Relaxed);
                }
                if !shared_in || (!old_in && !new_in && !old_again) {
                    violations.push((shared_in, old_in, new_in));
                }
                polls.fetch_add(1, Ordering::Relaxed);
            }
            violations
        })
    };
    // Back and forth, at least 4 times and until the reader has looked inside a sync (it
    // needs the CPU during one of them; on this machine it does so hundreds of times a sync).
    let mut rounds = 0;
    while rounds < 4 || (inside.load(Ordering::Relaxed) == 0 && rounds < 20) {
        let round = rounds;
        rounds += 1;
        let (set, wanted) = if round % 2 == 0 {
            (&new_set, &new_cidrs)
        } else {
            (&old_set, &old_cidrs)
        };
        dns.set("relay.mx.test", &as_strs(set), 1);
        rig.wait_for("the next set", Duration::from_secs(10), |map, _| {
            map == wanted
        })
        .await;
        // Let the reader see the result too before the next round.
        let seen = polls.load(Ordering::Relaxed);
        while polls.load(Ordering::Relaxed) < seen + 100 {
            tokio::time::sleep(MS).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.join().expect("watcher");
    let inside = inside.load(Ordering::Relaxed);
    eprintln!(
        "{rounds} syncs; the reader polled {} times, {inside} of them between a sync's adds \
         and its removes",
        polls.load(Ordering::Relaxed)
    );
    assert!(
        violations.is_empty(),
        "{} polls saw the shared addresses missing, or the old and the new one both gone: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert!(
        inside > 0,
        "the reader never looked inside a sync: the test proved nothing"
    );
}

#[tokio::test]
async fn an_address_two_names_share_stays_until_neither_has_it() {
    let dns = TestDns::start().await;
    dns.set("a.mx.test", &["192.0.2.50"], 1);
    dns.set("b.mx.test", &["192.0.2.50", "192.0.2.51"], 1);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["a.mx.test", "b.mx.test"],
            &["192.0.2.51"],
            policy(300, 5000, 60_000),
            None,
        ),
        false,
    );
    rig.wait_for("both names", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.50", "192.0.2.51"])
    })
    .await;
    // a moves away: b still has .50; b's .51 is also static.
    dns.set("a.mx.test", &["192.0.2.52"], 1);
    rig.wait_for("a's new address", Duration::from_secs(5), |map, _| {
        map.contains(&"192.0.2.52".parse().unwrap())
    })
    .await;
    assert_eq!(
        rig.allowlist(),
        cidrs(&["192.0.2.50", "192.0.2.51", "192.0.2.52"])
    );
    // b drops both: .50 has no source left, .51 stays (static).
    dns.set("b.mx.test", &["192.0.2.53"], 1);
    rig.wait_for("b's new address", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.51", "192.0.2.52", "192.0.2.53"])
    })
    .await;
}

/// How a test breaks DNS.
enum Breakage {
    Mode(Mode),
    /// The name disappears from the zone (NXDOMAIN).
    Remove,
    /// The name stays but has no addresses (NOERROR, no records).
    NoAddresses,
    /// The server shuts down: its port is closed.
    Stop,
}

/// Fills from DNS, breaks DNS, and checks that the addresses stay through several failed
/// rounds and that each failure is counted under `kind`.
async fn failure_keeps_the_addresses(breakage: Breakage, kind: &str) {
    let mut dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.60", "2001:db8::60"], 1);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(200, 1000, 60_000),
            None,
        ),
        false,
    );
    let expected = cidrs(&["192.0.2.60", "2001:db8::60"]);
    rig.wait_for("the first answer", Duration::from_secs(5), |map, _| {
        *map == expected
    })
    .await;
    match breakage {
        Breakage::Mode(mode) => dns.set_mode(mode),
        Breakage::Remove => dns.remove("relay.mx.test"),
        Breakage::NoAddresses => dns.set("relay.mx.test", &[], 1),
        Breakage::Stop => dns.stop().await,
    }
    let kind_owned = kind.to_string();
    let took = rig
        .wait_for(
            "three failed rounds",
            Duration::from_secs(15),
            |map, stats| {
                assert_eq!(*map, expected, "a failure changed the map");
                stats
                    .failures_by_kind
                    .get(&kind_owned)
                    .copied()
                    .unwrap_or(0)
                    >= 3
            },
        )
        .await;
    eprintln!(
        "{kind}: three failed rounds in {took:?}, stats {:?}",
        rig.stats
    );
    assert_eq!(rig.allowlist(), expected);
    assert_eq!(
        rig.stats.failures, rig.stats.failures_by_kind[kind],
        "only {kind}"
    );
    assert_eq!(rig.syn(ip("192.0.2.60")), XDP_PASS);
    assert_eq!(rig.syn(ip("2001:db8::60")), XDP_PASS);
    // Back-off: the failed rounds were 0.2 s, 0.4 s, 0.8 s apart (plus jitter), not a burst.
    rig.hold("fail-static", 300 * MS, |map| *map == expected)
        .await;
}

#[tokio::test]
async fn servfail_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::Mode(Mode::ServFail), "SERVFAIL").await;
}

#[tokio::test]
async fn refused_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::Mode(Mode::Refused), "REFUSED").await;
}

#[tokio::test]
async fn nxdomain_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::Remove, "NXDOMAIN").await;
}

#[tokio::test]
async fn empty_answer_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::NoAddresses, "empty answer").await;
}

#[tokio::test]
async fn timeout_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::Mode(Mode::Silent), "timeout").await;
}

#[tokio::test]
async fn server_gone_keeps_the_addresses() {
    failure_keeps_the_addresses(Breakage::Stop, "timeout").await;
}

#[tokio::test]
async fn addresses_expire_after_the_stale_grace_and_the_filter_keeps_dropping() {
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.70"], 1);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(200, 500, 2500),
            None,
        ),
        false,
    );
    rig.wait_for("the first answer", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.70"])
    })
    .await;
    dns.set_mode(Mode::ServFail);
    let failing_since = Instant::now();
    // Kept through the failures until the grace (2.5 s after the last success) is over.
    rig.hold("addresses kept within the grace", 1800 * MS, |map| {
        *map == cidrs(&["192.0.2.70"])
    })
    .await;
    let took = rig
        .wait_for("the stale expiry", Duration::from_secs(5), |map, _| {
            map.is_empty()
        })
        .await;
    let expired_after = failing_since.elapsed();
    eprintln!("expired {expired_after:?} after DNS broke (waited {took:?} past 1.8 s)");
    assert!(expired_after >= 1800 * MS && expired_after < 4000 * MS);
    assert_eq!(rig.stats.expired, 1);
    // Fail closed: no return to monitor mode.
    assert_eq!(rig.action(), Action::Drop);
    assert_eq!(rig.syn(ip("192.0.2.70")), XDP_DROP);
}

#[tokio::test]
async fn a_restart_while_dns_is_down_restores_the_state_file() {
    let state = TempDir::new("restore");
    let mut dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.80", "2001:db8::80"], 30);
    {
        let mut rig = Rig::start(
            engine(
                dns.addr(),
                &["relay.mx.test"],
                &[],
                policy(1000, 60_000, 600_000),
                Some(&state.0),
            ),
            false,
        );
        rig.wait_for("the first answer", Duration::from_secs(5), |_, stats| {
            stats.state_writes >= 1
        })
        .await;
    }
    let file = StateFile::in_dir(&state.0);
    let saved = file.load().expect("a valid state file").expect("written");
    let saved_name = &saved.names[&"relay.mx.test".parse().unwrap()];
    assert_eq!(
        saved_name.ipv4.addresses,
        BTreeSet::from([ip("192.0.2.80")])
    );
    assert_eq!(
        saved_name.ipv6.addresses,
        BTreeSet::from([ip("2001:db8::80")])
    );

    // DNS goes away; the daemon restarts.
    dns.stop().await;
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(200, 60_000, 600_000),
            Some(&state.0),
        ),
        false,
    );
    let expected = cidrs(&["192.0.2.80", "2001:db8::80"]);
    assert_eq!(rig.allowlist(), expected, "restored before any DNS answer");
    assert_eq!(
        rig.action(),
        Action::Drop,
        "no monitor mode: the list is not empty"
    );
    assert_eq!(rig.syn(ip("192.0.2.80")), XDP_PASS);
    assert_eq!(rig.syn(ip("203.0.113.9")), XDP_DROP);
    rig.wait_for("failed lookups", Duration::from_secs(10), |map, stats| {
        assert_eq!(*map, expected);
        stats.failures >= 2
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_ignored_and_replaced() {
    let state = TempDir::new("corrupt");
    let file = StateFile::in_dir(&state.0);
    std::fs::write(
        file.path(),
        b"{\"version\": 1, \"names\": {\"relay.mx.test.\": [",
    )
    .unwrap();
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.90"], 30);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(1000, 60_000, 600_000),
            Some(&state.0),
        ),
        false,
    );
    assert!(rig.allowlist().is_empty(), "nothing restored from garbage");
    rig.wait_for("the first answer", Duration::from_secs(5), |map, stats| {
        *map == cidrs(&["192.0.2.90"]) && stats.state_writes >= 1
    })
    .await;
    let saved = file
        .load()
        .expect("replaced by a valid file")
        .expect("written");
    assert_eq!(saved.names.len(), 1);
}

#[tokio::test]
async fn an_empty_start_monitors_until_dns_answers_then_drops() {
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.100"], 30);
    dns.set_mode(Mode::Silent);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(200, 60_000, 600_000),
            None,
        ),
        false,
    );
    assert_eq!(rig.action(), Action::Monitor);
    // Nothing allowed yet, but nothing dropped either: counted as would-be drops.
    assert_eq!(rig.syn(ip("192.0.2.100")), XDP_PASS);
    assert_eq!(rig.syn(ip("203.0.113.1")), XDP_PASS);
    let counters = rig.counters();
    assert_eq!(
        (
            counters.get(Counter::SynWouldDrop),
            counters.get(Counter::SynDropped)
        ),
        (2, 0)
    );

    dns.set_mode(Mode::Normal);
    rig.wait_for("the first answer", Duration::from_secs(10), |map, _| {
        !map.is_empty()
    })
    .await;
    assert_eq!(rig.action(), Action::Drop);
    assert_eq!(rig.syn(ip("192.0.2.100")), XDP_PASS);
    assert_eq!(rig.syn(ip("203.0.113.1")), XDP_DROP);
    let counters = rig.counters();
    assert_eq!(
        (
            counters.get(Counter::SynWouldDrop),
            counters.get(Counter::SynDropped),
            counters.get(Counter::SynAllowed)
        ),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_strict_start_drops_from_the_first_moment() {
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.110"], 30);
    dns.set_mode(Mode::Silent);
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(200, 60_000, 600_000),
            None,
        ),
        true,
    );
    assert_eq!(rig.action(), Action::Drop);
    assert_eq!(rig.syn(ip("192.0.2.110")), XDP_DROP);
    let counters = rig.counters();
    assert_eq!(
        (
            counters.get(Counter::SynWouldDrop),
            counters.get(Counter::SynDropped)
        ),
        (0, 1)
    );
    dns.set_mode(Mode::Normal);
    rig.wait_for("the first answer", Duration::from_secs(10), |map, _| {
        !map.is_empty()
    })
    .await;
    assert_eq!(rig.syn(ip("192.0.2.110")), XDP_PASS);
}

#[tokio::test]
async fn the_configured_action_takes_over_from_the_start_up_monitor() {
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.120"], 30);
    dns.set_mode(Mode::Silent);
    let policy = policy(200, 60_000, 600_000);
    let mut reject = Rig::start_with(
        engine(dns.addr(), &["relay.mx.test"], &[], policy, None),
        Action::Reject,
        false,
    );
    // A configured monitor is never switched to enforcing.
    let mut monitor = Rig::start_with(
        engine(dns.addr(), &["relay.mx.test"], &[], policy, None),
        Action::Monitor,
        false,
    );
    assert_eq!(reject.action(), Action::Monitor, "empty at start");
    assert_eq!(monitor.action(), Action::Monitor);
    dns.set_mode(Mode::Normal);
    for rig in [&mut reject, &mut monitor] {
        rig.wait_for("the first answer", Duration::from_secs(10), |map, _| {
            !map.is_empty()
        })
        .await;
    }
    assert_eq!(reject.action(), Action::Reject);
    assert_eq!(monitor.action(), Action::Monitor);
    assert_eq!(reject.syn(ip("203.0.113.2")), XDP_TX, "answered with a RST");
    assert_eq!(reject.counters().get(Counter::SynRejected), 1);
    assert_eq!(monitor.syn(ip("203.0.113.2")), XDP_PASS);
    assert_eq!(monitor.counters().get(Counter::SynWouldDrop), 1);
}
