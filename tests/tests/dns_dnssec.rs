//! `--dns-dnssec validate` against a zone that BIND's dnssec-signzone signed at test time and
//! `named` serves on loopback, with the zone's key-signing key as the trust anchor: a correctly
//! signed answer is used; a tampered one (a record edited after signing) and an unsigned one
//! are failures, counted as `dnssec`, and the source keeps its last good set. Run as root.

use std::time::Duration;

use filter_user::dns::{Dnssec, RefreshPolicy, sources::Source};
use test_kit::{
    bind::{SignedZone, Variant},
    dns_rig::{Rig, XDP_DROP, XDP_PASS, cidrs, engine_with, names},
    temp_dir::TempDir,
};

fn policy() -> RefreshPolicy {
    RefreshPolicy {
        min_refresh: Duration::from_millis(300),
        max_refresh: Duration::from_secs(2),
        stale_grace: Duration::from_secs(600),
    }
}

const RECORDS: &str = "relay IN A 192.0.2.10\nrelay IN AAAA 2001:db8::10\n\
                       _spf IN TXT \"v=spf1 ip4:198.51.100.0/24 -all\"\n";

fn dnssec_failures(stats: &filter_user::dns::DnsStats, source: &Source) -> u64 {
    stats
        .sources
        .get(source)
        .and_then(|s| s.failures_by_kind.get("dnssec"))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn signed_answers_pass_tampered_and_unsigned_ones_fail_static() {
    let zone = SignedZone::sign("mx.test", RECORDS);
    let validate = Dnssec::Validate {
        trust_anchor: Some(zone.trust_anchor.clone()),
    };
    let state = TempDir::new("dnssec");
    let host = Source::Host("relay.mx.test".parse().unwrap());
    let spf = Source::Spf("_spf.mx.test".parse().unwrap());
    let start = |server| {
        Rig::start(
            engine_with(
                server,
                &["relay.mx.test"],
                &[],
                policy(),
                Some(&state.0),
                &validate,
            )
            .with_spf(&names(&["_spf.mx.test"])),
            false,
        )
    };
    let expected = cidrs(&["192.0.2.10", "2001:db8::10", "198.51.100.0/24"]);

    // Correctly signed: validated and used.
    let signed = zone.serve(Variant::Signed);
    let mut rig = start(signed.addr);
    rig.wait_for(
        "the validated answers",
        Duration::from_secs(10),
        |map, stats| *map == expected && stats.state_writes >= 1,
    )
    .await;
    assert_eq!(rig.syn("192.0.2.10".parse().unwrap()), XDP_PASS);
    assert!(rig.stats.failures_by_kind.is_empty(), "{:?}", rig.stats);
    drop(rig);
    drop(signed);

    // Tampered: the relay's address edited after signing. A restart restores the state file;
    // the bogus answers are failures and change nothing.
    let tampered = zone.serve(Variant::Tampered {
        from: "192.0.2.10",
        to: "203.0.113.66",
    });
    let mut rig = start(tampered.addr);
    rig.wait_for(
        "bogus answers refused",
        Duration::from_secs(10),
        |_, stats| dnssec_failures(stats, &host) >= 2,
    )
    .await;
    assert_eq!(rig.allowlist(), expected, "fail static");
    assert_eq!(rig.syn("203.0.113.66".parse().unwrap()), XDP_DROP);
    drop(rig);
    drop(tampered);

    // Unsigned: the same records without signatures, while the trust anchor says the zone is
    // signed.
    let unsigned = zone.serve(Variant::Unsigned);
    let mut rig = start(unsigned.addr);
    rig.wait_for(
        "unsigned answers refused",
        Duration::from_secs(10),
        |_, stats| dnssec_failures(stats, &host) >= 2 && dnssec_failures(stats, &spf) >= 1,
    )
    .await;
    assert_eq!(rig.allowlist(), expected, "fail static");

    // Without validation the same unsigned server is believed: the test can tell the two.
    drop(rig);
    let mut plain = Rig::start(
        engine_with(
            unsigned.addr,
            &["relay.mx.test"],
            &[],
            policy(),
            None,
            &Dnssec::Off,
        ),
        false,
    );
    plain
        .wait_for(
            "the unvalidated answer",
            Duration::from_secs(10),
            |map, _| *map == cidrs(&["192.0.2.10", "2001:db8::10"]),
        )
        .await;
}
