//! `--allow-spf` and the DNS guards against a real authoritative DNS server (hickory-server on
//! 127.0.0.1, A/AAAA/TXT/MX, truncating UDP answers over 512 bytes) and the real XDP program's
//! maps. The records are shaped like the ones hosted filters publish: nested includes, ip6
//! terms, `a:`/`mx:` terms, and the broken kinds (loops, too many lookups, void lookups).
//! Run as root.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use filter_user::{
    cidr::Cidr,
    dns::{Guards, RefreshPolicy, SourceStats, sources::Source, state_file::StateFile},
};
use hickory_proto::rr::RecordType;
use test_kit::{
    dns_rig::{Rig, XDP_DROP, XDP_PASS, cidrs, engine, names},
    dns_server::{Mode, Protocol, TestDns},
    temp_dir::TempDir,
};

fn policy(min_ms: u64, max_ms: u64, grace_ms: u64) -> RefreshPolicy {
    RefreshPolicy {
        min_refresh: Duration::from_millis(min_ms),
        max_refresh: Duration::from_millis(max_ms),
        stale_grace: Duration::from_millis(grace_ms),
    }
}

/// A rig whose engine follows the SPF records `spf` alone, asking `server`.
fn spf_rig(
    server: std::net::SocketAddr,
    spf: &[&str],
    policy: RefreshPolicy,
    state: Option<&std::path::PathBuf>,
) -> Rig {
    Rig::start(
        engine(server, &[], &[], policy, state.map(|dir| dir.as_path())).with_spf(&names(spf)),
        false,
    )
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn spf(name: &str) -> Source {
    Source::Spf(name.parse().expect("test name"))
}

fn host(name: &str) -> Source {
    Source::Host(name.parse().expect("test name"))
}

fn source_stats(stats: &filter_user::dns::DnsStats, source: &Source) -> SourceStats {
    stats.sources.get(source).cloned().unwrap_or_default()
}

/// The records of a service that publishes its ranges the way the big ones do.
fn publish_netblocks(dns: &TestDns) {
    dns.set_txt(
        "_netblocks.mx.test",
        &[
            "google-site-verification=not-spf",
            "v=spf1 ip4:192.0.2.0/26 include:_eu.mx.test include:_us.mx.test -all",
        ],
        60,
    );
    dns.set_txt(
        "_eu.mx.test",
        &["v=spf1 ip6:2001:db8:e0::/48 include:_eu2.mx.test ~all"],
        60,
    );
    // Three deep, with the shortest TTL of the chain.
    dns.set_txt(
        "_eu2.mx.test",
        &["v=spf1 ip4:198.51.100.0/25 a:relay.mx.test/28 mx:mail.mx.test -all"],
        1,
    );
    dns.set("relay.mx.test", &["203.0.113.17"], 60);
    dns.set_mx("mail.mx.test", &["mx1.mail.mx.test"], 60);
    dns.set("mx1.mail.mx.test", &["203.0.113.40", "2001:db8:40::1"], 60);
    // Only pass-qualified terms count; ptr and exists are ignored; a redirect next to an
    // `all` is never used.
    dns.set_txt(
        "_us.mx.test",
        &[
            "v=spf1 +ip4:192.0.2.128/25 -ip4:203.0.113.99 ?ip4:203.0.113.98 \
           ~ip4:203.0.113.97 ptr exists:%{i}.bl.mx.test redirect=_never.mx.test -all",
        ],
        60,
    );
}

const NETBLOCKS: [&str; 7] = [
    "192.0.2.0/26",
    "2001:db8:e0::/48",
    "198.51.100.0/25",
    "203.0.113.16/28",
    "203.0.113.40",
    "2001:db8:40::1",
    "192.0.2.128/25",
];

#[tokio::test]
async fn nested_includes_ip6_a_and_mx_terms_expand_into_the_map() {
    let dns = TestDns::start().await;
    publish_netblocks(&dns);
    let state = TempDir::new("nested");
    let mut rig = spf_rig(
        dns.addr(),
        &["_netblocks.mx.test"],
        policy(300, 5000, 600_000),
        Some(&state.0),
    );
    rig.wait_for("the expanded record", Duration::from_secs(5), |map, _| {
        *map == cidrs(&NETBLOCKS)
    })
    .await;
    for passes in [
        "198.51.100.5",
        "203.0.113.20",
        "2001:db8:e0::7",
        "192.0.2.200",
    ] {
        assert_eq!(rig.syn(ip(passes)), XDP_PASS, "{passes}");
    }
    for dropped in [
        "203.0.113.99",
        "203.0.113.98",
        "203.0.113.97",
        "203.0.113.41",
    ] {
        assert_eq!(rig.syn(ip(dropped)), XDP_DROP, "{dropped}");
    }
    assert!(
        dns.seen_for("_never.mx.test").is_empty(),
        "a redirect beside an all is not followed"
    );
    assert!(
        dns.seen_for("bl.mx.test").is_empty(),
        "exists is not queried"
    );

    // Refreshed at the chain's lowest TTL (1 s, _eu2), not the top record's 60 s (which the
    // max refresh would clamp to 5 s).
    rig.wait_for("a second round", Duration::from_secs(8), |_, _| {
        dns.seen_for("_netblocks.mx.test").len() >= 2
    })
    .await;
    let rounds = dns.seen_for("_netblocks.mx.test");
    let gap = rounds[1].at - rounds[0].at;
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_millis(2500),
        "second round after {gap:?}"
    );
    let stats = source_stats(&rig.stats, &spf("_netblocks.mx.test"));
    assert_eq!(stats.entries, NETBLOCKS.len() as u64, "{stats:?}");
    assert!(
        stats.lookups >= 1 && stats.last_success_unix.is_some(),
        "{stats:?}"
    );
    assert!(stats.failures_by_kind.is_empty(), "{stats:?}");

    // The state file keeps each prefix with its origin chain.
    let saved = StateFile::in_dir(&state.0)
        .load()
        .unwrap()
        .expect("a state file");
    let chains: BTreeSet<(String, String)> = saved.spf[&"_netblocks.mx.test".parse().unwrap()]
        .prefixes
        .iter()
        .map(|p| (p.prefix.to_string(), p.chain.join(" → ")))
        .collect();
    for expected in [
        ("192.0.2.0/26", "spf _netblocks.mx.test"),
        (
            "2001:db8:e0::/48",
            "spf _netblocks.mx.test → include:_eu.mx.test",
        ),
        (
            "198.51.100.0/25",
            "spf _netblocks.mx.test → include:_eu.mx.test → include:_eu2.mx.test",
        ),
        (
            "203.0.113.16/28",
            "spf _netblocks.mx.test → include:_eu.mx.test → include:_eu2.mx.test → a:relay.mx.test",
        ),
        (
            "2001:db8:40::1/128",
            "spf _netblocks.mx.test → include:_eu.mx.test → include:_eu2.mx.test → mx:mail.mx.test",
        ),
    ] {
        assert!(
            chains.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {chains:#?}"
        );
    }
}

#[tokio::test]
async fn a_txt_answer_over_512_bytes_is_fetched_again_over_tcp() {
    let dns = TestDns::start().await;
    let terms: Vec<String> = (0..40)
        .map(|i| format!("ip4:198.51.100.{}", i * 4))
        .collect();
    let record = format!("v=spf1 {} -all", terms.join(" "));
    assert!(record.len() > 512, "{} bytes", record.len());
    dns.set_txt("_big.mx.test", &[&record], 60);
    let mut rig = spf_rig(
        dns.addr(),
        &["_big.mx.test"],
        policy(1000, 60_000, 600_000),
        None,
    );
    let expected: BTreeSet<Cidr> = (0..40)
        .map(|i| format!("198.51.100.{}", i * 4).parse().unwrap())
        .collect();
    rig.wait_for("all 40 prefixes", Duration::from_secs(5), |map, _| {
        *map == expected
    })
    .await;
    let protocols: Vec<Protocol> = dns
        .seen_for("_big.mx.test")
        .into_iter()
        .filter(|s| s.record_type == RecordType::TXT)
        .map(|s| s.protocol)
        .collect();
    assert_eq!(
        protocols,
        [Protocol::Udp, Protocol::Tcp],
        "truncated over UDP, then asked over TCP"
    );
}

/// Serves `name` a good record first, then `broken`; the good prefix must stay (fail static)
/// and the failure be counted as an SPF permerror for that source.
async fn a_broken_record_keeps_the_last_good_set(name: &str, broken: impl Fn(&TestDns)) {
    let dns = TestDns::start().await;
    dns.set_txt(name, &["v=spf1 ip4:192.0.2.77 -all"], 1);
    let mut rig = spf_rig(dns.addr(), &[name], policy(300, 2000, 600_000), None);
    rig.wait_for("the good record", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.77"])
    })
    .await;
    broken(&dns);
    let source = spf(name);
    rig.wait_for("two failed rounds", Duration::from_secs(10), |_, stats| {
        source_stats(stats, &source)
            .failures_by_kind
            .get("spf-permerror")
            .is_some_and(|n| *n >= 2)
    })
    .await;
    assert_eq!(rig.allowlist(), cidrs(&["192.0.2.77"]), "{name}");
}

#[tokio::test]
async fn an_include_loop_fails_static() {
    a_broken_record_keeps_the_last_good_set("_loop.mx.test", |dns| {
        dns.set_txt(
            "_loop.mx.test",
            &["v=spf1 ip4:192.0.2.78 include:_loop2.mx.test -all"],
            1,
        );
        dns.set_txt("_loop2.mx.test", &["v=spf1 include:_loop3.mx.test -all"], 1);
        dns.set_txt("_loop3.mx.test", &["v=spf1 include:_loop.mx.test -all"], 1);
    })
    .await;
}

#[tokio::test]
async fn more_than_ten_lookups_fail_static() {
    a_broken_record_keeps_the_last_good_set("_many.mx.test", |dns| {
        let includes: Vec<String> = (0..11).map(|i| format!("include:_n{i}.mx.test")).collect();
        for i in 0..11 {
            dns.set_txt(
                &format!("_n{i}.mx.test"),
                &[&format!("v=spf1 ip4:198.51.100.{i} -all")],
                1,
            );
        }
        dns.set_txt(
            "_many.mx.test",
            &[&format!("v=spf1 {} -all", includes.join(" "))],
            1,
        );
    })
    .await;
}

#[tokio::test]
async fn a_void_lookup_chain_fails_static() {
    a_broken_record_keeps_the_last_good_set("_void.mx.test", |dns| {
        dns.set_txt(
            "_void.mx.test",
            &["v=spf1 a:gone1.mx.test mx:gone2.mx.test a:gone3.mx.test -all"],
            1,
        );
    })
    .await;
}

#[tokio::test]
async fn all_contributes_nothing_and_plus_all_is_refused_by_the_min_prefix_guard() {
    let dns = TestDns::start().await;
    dns.set_txt("_dash.mx.test", &["v=spf1 ip4:192.0.2.1 -all"], 60);
    dns.set_txt("_tilde.mx.test", &["v=spf1 ip4:192.0.2.2 ~all"], 60);
    dns.set_txt(
        "_plus.mx.test",
        &["v=spf1 ip4:192.0.2.3 ip4:192.0.0.0/8 ip6:2001:db8::/16 +all"],
        60,
    );
    let mut rig = spf_rig(
        dns.addr(),
        &["_dash.mx.test", "_tilde.mx.test", "_plus.mx.test"],
        policy(1000, 60_000, 600_000),
        None,
    );
    rig.wait_for("the three records", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.1", "192.0.2.2", "192.0.2.3"])
    })
    .await;
    assert_eq!(rig.syn(ip("203.0.113.1")), XDP_DROP, "+all opened nothing");
    let plus = source_stats(&rig.stats, &spf("_plus.mx.test"));
    assert_eq!(
        plus.refusals_by_guard.get("min-prefix"),
        Some(&4),
        "0.0.0.0/0, ::/0, /8 and /16: {plus:?}"
    );
    assert_eq!(rig.stats.refusals_by_guard.get("min-prefix"), Some(&4));
    assert!(
        source_stats(&rig.stats, &spf("_dash.mx.test"))
            .refusals_by_guard
            .is_empty()
    );
}

#[tokio::test]
async fn a_failing_include_keeps_its_last_good_prefixes() {
    let dns = TestDns::start().await;
    publish_netblocks(&dns);
    let mut rig = spf_rig(
        dns.addr(),
        &["_netblocks.mx.test"],
        policy(300, 2000, 600_000),
        None,
    );
    rig.wait_for("the expanded record", Duration::from_secs(5), |map, _| {
        *map == cidrs(&NETBLOCKS)
    })
    .await;
    // The deepest include breaks while the top record moves one range.
    dns.set_name_mode("_eu2.mx.test", Mode::ServFail);
    dns.set_txt(
        "_netblocks.mx.test",
        &["v=spf1 ip4:192.0.2.64/26 include:_eu.mx.test include:_us.mx.test -all"],
        1,
    );
    let mut expected = cidrs(&NETBLOCKS);
    expected.remove(&"192.0.2.0/26".parse().unwrap());
    expected.insert("192.0.2.64/26".parse().unwrap());
    let source = spf("_netblocks.mx.test");
    rig.wait_for(
        "the move, the include kept",
        Duration::from_secs(10),
        |map, stats| {
            *map == expected
                && source_stats(stats, &source)
                    .failures_by_kind
                    .get("SERVFAIL")
                    .is_some_and(|n| *n >= 2)
        },
    )
    .await;
    assert_eq!(
        rig.syn(ip("198.51.100.5")),
        XDP_PASS,
        "_eu2's range is kept"
    );
}

#[tokio::test]
async fn guards_refuse_short_outside_and_too_many_prefixes() {
    let dns = TestDns::start().await;
    dns.set("in.mx.test", &["192.0.2.10", "192.0.2.11"], 1);
    dns.set("out.mx.test", &["192.0.2.12", "203.0.113.12"], 60);
    dns.set_txt(
        "_spf.mx.test",
        &["v=spf1 ip4:192.0.2.0/28 ip4:198.51.100.0/24 ip6:2001:db8::/20 -all"],
        60,
    );
    let guards = Guards {
        max_prefixes: 2,
        allow_within: vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        ..Guards::default()
    };
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["in.mx.test", "out.mx.test"],
            &["203.0.113.0/24"],
            policy(300, 2000, 600_000),
            None,
        )
        .with_spf(&names(&["_spf.mx.test"]))
        .with_guards(guards),
        false,
    );
    rig.wait_for("the screened answers", Duration::from_secs(5), |map, _| {
        *map == cidrs(&[
            "203.0.113.0/24",
            "192.0.2.10",
            "192.0.2.11",
            "192.0.2.12",
            "192.0.2.0/28",
        ])
    })
    .await;
    // allow-within: out.mx.test's 203.0.113.12 (the static /24 is not limited) and the
    // SPF's 198.51.100.0/24; min-prefix: the SPF's /20.
    let refused = |source: &Source, guard: &str| {
        source_stats(&rig.stats, source)
            .refusals_by_guard
            .get(guard)
            .copied()
            .unwrap_or(0)
    };
    assert!(
        refused(&host("out.mx.test"), "allow-within") >= 1,
        "{:?}",
        rig.stats
    );
    assert!(
        refused(&spf("_spf.mx.test"), "allow-within") >= 1,
        "{:?}",
        rig.stats
    );
    assert!(
        refused(&spf("_spf.mx.test"), "min-prefix") >= 1,
        "{:?}",
        rig.stats
    );
    assert_eq!(refused(&host("in.mx.test"), "allow-within"), 0);
    assert_eq!(rig.syn(ip("198.51.100.1")), XDP_DROP);

    // in.mx.test grows past the cap of 2: refused whole, the last good set stays.
    dns.set("in.mx.test", &["192.0.2.10", "192.0.2.11", "192.0.2.13"], 1);
    let source = host("in.mx.test");
    rig.wait_for(
        "two refused answers",
        Duration::from_secs(10),
        |_, stats| {
            let per = source_stats(stats, &source);
            per.refusals_by_guard
                .get("max-prefixes")
                .is_some_and(|n| *n >= 2)
                && per
                    .failures_by_kind
                    .get("over-cap")
                    .is_some_and(|n| *n >= 2)
        },
    )
    .await;
    assert!(rig.allowlist().contains(&"192.0.2.10".parse().unwrap()));
    assert!(!rig.allowlist().contains(&"192.0.2.13".parse().unwrap()));
    assert!(
        rig.stats
            .refusals_by_guard
            .get("max-prefixes")
            .copied()
            .unwrap_or(0)
            >= 2
    );
}

#[tokio::test]
async fn spf_and_a_name_sharing_an_address_keep_it_until_neither_has_it() {
    let dns = TestDns::start().await;
    dns.set("relay.mx.test", &["192.0.2.10"], 1);
    dns.set_txt(
        "_spf.mx.test",
        &["v=spf1 ip4:192.0.2.10 ip4:192.0.2.20 -all"],
        1,
    );
    let mut rig = Rig::start(
        engine(
            dns.addr(),
            &["relay.mx.test"],
            &[],
            policy(300, 2000, 600_000),
            None,
        )
        .with_spf(&names(&["_spf.mx.test"])),
        false,
    );
    let shared: Cidr = "192.0.2.10".parse().unwrap();
    rig.wait_for("both sources", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.10", "192.0.2.20"])
    })
    .await;
    // The name moves: the SPF record still has .10, so it never leaves the map.
    dns.set("relay.mx.test", &["192.0.2.11"], 1);
    rig.hold(
        "the shared address present",
        Duration::from_secs(2),
        |map| map.contains(&shared),
    )
    .await;
    assert_eq!(
        rig.allowlist(),
        cidrs(&["192.0.2.10", "192.0.2.11", "192.0.2.20"])
    );
    // The SPF record moves .10 to .21: now nobody has .10, and .21 arrives before it goes.
    dns.set_txt(
        "_spf.mx.test",
        &["v=spf1 ip4:192.0.2.21 ip4:192.0.2.20 -all"],
        1,
    );
    rig.wait_for("the SPF move", Duration::from_secs(5), |map, _| {
        *map == cidrs(&["192.0.2.11", "192.0.2.20", "192.0.2.21"])
    })
    .await;
    // Every map state on the way: .10 left only in the sync that brought .21 (add before
    // remove), never with neither present.
    let first = rig
        .history
        .iter()
        .position(|(_, wanted)| wanted.contains(&shared))
        .expect("the shared address arrived");
    for (_, wanted) in &rig.history[first..] {
        assert!(
            wanted.contains(&shared) || wanted.contains(&"192.0.2.21".parse().unwrap()),
            "{:?}",
            rig.history
        );
    }
}

#[tokio::test]
async fn a_restart_while_dns_is_down_restores_the_spf_prefixes() {
    let state = TempDir::new("restart");
    let mut dns = TestDns::start().await;
    publish_netblocks(&dns);
    {
        let mut rig = spf_rig(
            dns.addr(),
            &["_netblocks.mx.test"],
            policy(300, 5000, 600_000),
            Some(&state.0),
        );
        rig.wait_for(
            "the expanded record",
            Duration::from_secs(5),
            |map, stats| *map == cidrs(&NETBLOCKS) && stats.state_writes >= 1,
        )
        .await;
    }
    let dead = dns.addr();
    dns.stop().await;
    let mut rig = spf_rig(
        dead,
        &["_netblocks.mx.test"],
        policy(300, 5000, 600_000),
        Some(&state.0),
    );
    assert_eq!(
        rig.allowlist(),
        cidrs(&NETBLOCKS),
        "restored before any lookup"
    );
    let source = spf("_netblocks.mx.test");
    rig.wait_for("a failed round", Duration::from_secs(10), |_, stats| {
        !source_stats(stats, &source).failures_by_kind.is_empty()
    })
    .await;
    assert_eq!(
        rig.allowlist(),
        cidrs(&NETBLOCKS),
        "kept through the failure"
    );
}
