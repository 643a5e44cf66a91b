//! End to end with DNS: the real `mxguard` binary in the mail server's namespace learns the
//! relay's addresses from a real DNS server (on the namespace's loopback), and real TCP
//! connections to port 25 pass or die at the XDP filter accordingly; the relay moving in DNS
//! moves the filter; a restart with DNS gone restores the last answer from the state file.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use test_kit::{
    bind::{SignedZone, Variant},
    dns_server::{self, TestDns},
    lab::MailLab,
    netns::{Netns, assert_connects, assert_times_out},
    pins::TestPins,
    process::{Daemon, mxguard_bin, scrape_metrics, status_json},
    temp_dir::TempDir,
};

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn connects(from: &Netns, to: SocketAddr, daemon: &Daemon) {
    assert_connects(from, to, &daemon.log_tail());
}

fn times_out(from: &Netns, to: SocketAddr, daemon: &Daemon) {
    assert_times_out(from, to, &daemon.log_tail());
}

/// mxguard on the server's eth0 with fresh maps (its own pin directory, unpinned on exit),
/// so whatever it allows comes from DNS or the state file.
fn mxguard_with_dns(
    lab: &MailLab,
    dns: SocketAddr,
    state_dir: &TempDir,
    pins: &TestPins,
) -> Daemon {
    let mut command = lab.server.command(mxguard_bin());
    command
        .arg("run")
        .args(["--iface", "eth0", "--allow-host", "relay.mx.test"])
        .args(["--dns-server", &dns.to_string()])
        .args(["--dns-min-refresh", "300ms", "--dns-max-refresh", "2s"])
        .args(["--dns-stale-grace", "10m", "--dns-timeout", "300ms"])
        .args(["--state-dir", state_dir.0.to_str().expect("UTF-8 path")])
        .args(["--stats-interval", "0"])
        .args(["--pin-dir", pins.arg(), "--detach-on-exit"])
        .env("RUST_LOG", "info");
    Daemon::spawn(command)
}

/// mxguard with `relay.mx.test` from DNS, keeping its pins when it stops (a restart takes over
/// the maps an earlier run left), with `extra` flags.
fn mxguard_keeping_pins(
    lab: &MailLab,
    dns: SocketAddr,
    state_dir: &TempDir,
    pins: &TestPins,
    extra: &[&str],
) -> Daemon {
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--iface", "eth0", "--allow-host", "relay.mx.test"])
        .args(["--dns-server", &dns.to_string(), "--dns-timeout", "300ms"])
        .args(["--state-dir", state_dir.arg()])
        .args(["--stats-interval", "0", "--pin-dir", pins.arg()])
        .args(extra)
        .env("RUST_LOG", "info");
    Daemon::spawn(command)
}

/// Waits until a daemon started without a usable state file and without DNS has kept the
/// allowlist in place, attached, and lived through its first failed lookup round.
fn wait_kept_in_place_through_a_failed_lookup(daemon: &mut Daemon) {
    daemon.wait_for(
        "the allowlist kept in place",
        Duration::from_secs(30),
        |l| l.contains("keeping the allowlist in place"),
    );
    daemon.wait_for("the attach", Duration::from_secs(10), |l| {
        l.contains("attached XDP filter")
    });
    // The first failed round must not take the kept entries away.
    daemon.wait_for("a failed lookup", Duration::from_secs(10), |l| {
        l.contains("DNS lookup failed")
    });
}

/// Polls `done` for up to 10 s; panics naming `what` if it never holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A DNS server on the server namespace's loopback.
fn dns_in_server(lab: &MailLab) -> (tokio::runtime::Runtime, TestDns) {
    dns_server::serve_in(&lab.server)
}

#[test]
fn dns_answers_decide_who_reaches_port_25() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (server_v4, server_v6) = (MailLab::SERVER.v4, MailLab::SERVER.v6);
    let (relay, direct) = (MailLab::RELAY, MailLab::DIRECT);

    let (runtime, mut dns) = dns_in_server(&lab);
    dns.set(
        "relay.mx.test",
        &[&relay.v4.to_string(), &relay.v6.to_string()],
        1,
    );
    let state_dir = TempDir::new("dns-e2e");

    // Empty start: monitor until DNS answers, then drop; only the relay gets through.
    let first_pins = TestPins::new();
    let mut daemon = mxguard_with_dns(&lab, dns.addr(), &state_dir, &first_pins);
    daemon.wait_for("monitor mode at start", Duration::from_secs(30), |l| {
        l.contains("running in MONITOR mode")
    });
    daemon.wait_for("drop mode after the answer", Duration::from_secs(10), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    daemon.wait_for("the attach", Duration::from_secs(10), |l| {
        l.contains("attached XDP filter")
    });
    connects(&lab.relay, addr(server_v4, 25), &daemon);
    connects(&lab.relay, addr(server_v6, 25), &daemon);
    times_out(&lab.direct, addr(server_v4, 25), &daemon);
    times_out(&lab.direct, addr(server_v6, 25), &daemon);

    // The service moves its relay to the other host: after the TTL the filter follows.
    dns.set(
        "relay.mx.test",
        &[&direct.v4.to_string(), &direct.v6.to_string()],
        1,
    );
    let removed_relay = format!("removed=[{}/32, {}/128]", relay.v4, relay.v6);
    daemon.wait_for("the move in the map", Duration::from_secs(10), |l| {
        l.contains("allowlist map updated") && l.contains(&removed_relay)
    });
    connects(&lab.direct, addr(server_v4, 25), &daemon);
    connects(&lab.direct, addr(server_v6, 25), &daemon);
    times_out(&lab.relay, addr(server_v4, 25), &daemon);
    times_out(&lab.relay, addr(server_v6, 25), &daemon);
    assert!(daemon.stop().success(), "{}", daemon.log_tail());

    // DNS goes away and mxguard restarts: the state file still lets the relay in.
    runtime.block_on(dns.stop());
    let second_pins = TestPins::new();
    let mut daemon = mxguard_with_dns(&lab, dns.addr(), &state_dir, &second_pins);
    daemon.wait_for("the restore", Duration::from_secs(30), |l| {
        l.contains("restored from the state file")
    });
    daemon.wait_for("the attach", Duration::from_secs(10), |l| {
        l.contains("attached XDP filter")
    });
    connects(&lab.direct, addr(server_v4, 25), &daemon);
    times_out(&lab.relay, addr(server_v4, 25), &daemon);
    daemon.wait_for("a failed lookup", Duration::from_secs(10), |l| {
        l.contains("keeping the last known addresses")
    });
    connects(&lab.direct, addr(server_v6, 25), &daemon);
    let log = daemon.log();
    assert!(
        !log.contains("MONITOR"),
        "a restored allowlist drops from the start:\n{log}"
    );
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}

#[test]
fn a_lost_state_file_does_not_empty_the_pinned_allowlist() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (runtime, mut dns) = dns_in_server(&lab);
    dns.set("relay.mx.test", &[&MailLab::RELAY.v4.to_string()], 60);
    let state_dir = TempDir::new("dns-lost");
    let pins = TestPins::new();
    // Both runs keep their pins: the second must take over the first one's maps.
    let dns_addr = dns.addr();
    let start = || mxguard_keeping_pins(&lab, dns_addr, &state_dir, &pins, &[]);
    let mut first = start();
    first.wait_for("enforcing", Duration::from_secs(30), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    assert!(first.stop().success());
    // Status names where each entry comes from, from the state file.
    let state_arg = state_dir.0.to_str().unwrap();
    let status = status_json(&lab.server, pins.arg(), &["--state-dir", state_arg]);
    let origin = &status["allowlist_origins"][0];
    assert_eq!(origin["prefix"], "192.0.2.10/32", "{status:#}");
    assert_eq!(origin["origin"], "dns", "{status:#}");
    assert!(
        origin["names"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("relay.mx.test"),
        "{status:#}"
    );
    assert!(
        origin["names"][0]["confirmed_secs_ago"].as_u64().unwrap() < 120,
        "{status:#}"
    );

    // The state file is lost (corrupt) and DNS is down when the daemon comes back.
    std::fs::write(state_dir.0.join("dns-allowlist.json"), b"{ not json").unwrap();
    runtime.block_on(dns.stop());
    let mut second = start();
    wait_kept_in_place_through_a_failed_lookup(&mut second);
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &second);
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &second);
    assert!(
        !second.log().contains("MONITOR mode"),
        "{}",
        second.log_tail()
    );
    assert!(second.stop().success());
}

#[test]
fn a_pinned_allowlist_kept_for_a_lost_state_file_still_passes_the_guards() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (runtime, mut dns) = dns_in_server(&lab);
    // A wrong answer the first run took: the direct sender's address next to the relay's.
    let (relay, direct) = (
        MailLab::RELAY.v4.to_string(),
        MailLab::DIRECT.v4.to_string(),
    );
    dns.set("relay.mx.test", &[&relay, &direct], 60);
    let state_dir = TempDir::new("dns-lost-guarded");
    let pins = TestPins::new();
    let dns_addr = dns.addr();
    let start = |extra: &[&str]| mxguard_keeping_pins(&lab, dns_addr, &state_dir, &pins, extra);
    let mut first = start(&[]);
    first.wait_for("enforcing", Duration::from_secs(30), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    assert!(first.stop().success());

    // The operator narrows DNS to the relay's range; the state file is lost and DNS is down.
    std::fs::write(state_dir.0.join("dns-allowlist.json"), b"{ not json").unwrap();
    runtime.block_on(dns.stop());
    let within = format!("{relay}/32");
    let mut second = start(&["--dns-allow-within", &within]);
    wait_kept_in_place_through_a_failed_lookup(&mut second);
    let log = second.log();
    assert!(
        log.contains("allowlist entries in place refused by a guard") && log.contains(&direct),
        "the guard names the pinned entry it refused:\n{log}"
    );
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &second);
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &second);
    assert!(second.stop().success());
}

#[test]
fn reloads_remove_a_dropped_name_and_keep_the_allowlist_when_dns_is_down() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (runtime, mut dns) = dns_in_server(&lab);
    dns.set("relay.mx.test", &[&MailLab::RELAY.v4.to_string()], 60);
    dns.set("old.mx.test", &[&MailLab::DIRECT.v4.to_string()], 60);
    let dir = TempDir::new("dns-reload");
    let pins = TestPins::new();
    let config = dir.path().join("mxguard.toml");
    let write_config = |hosts: &str| {
        let text = format!(
            "iface = [\"eth0\"]\nallow-host = [{hosts}]\ndns-server = [\"{}\"]\n\
             dns-timeout = \"300ms\"\nstate-dir = \"{}\"\nmetrics-addr = \"127.0.0.1:9725\"\n",
            dns.addr(),
            dir.arg()
        );
        let temporary = dir.path().join("mxguard.toml.new");
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, &config).unwrap();
    };
    write_config("\"relay.mx.test\", \"old.mx.test\"");
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--config", config.to_str().unwrap()])
        .args([
            "--stats-interval",
            "0",
            "--pin-dir",
            pins.arg(),
            "--detach-on-exit",
        ])
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("enforcing", Duration::from_secs(30), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    let old = "source=\"old.mx.test.\"";
    let entries_of_old = || {
        scrape_metrics(&lab.server, addr(std::net::Ipv4Addr::LOCALHOST, 9725))
            .lines()
            .find(|l| l.starts_with("mxguard_dns_source_entries") && l.contains(old))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    wait_until("old.mx.test's one entry in the metrics", || {
        entries_of_old() == Some(1.0)
    });
    connects(&lab.direct, addr(MailLab::SERVER.v4, 25), &daemon);

    write_config("\"relay.mx.test\"");
    let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    daemon.wait_for("the reload", Duration::from_secs(10), |l| {
        l.contains("configuration reloaded")
    });
    wait_until(
        "0 entries for the removed source (not its last count)",
        || entries_of_old() == Some(0.0),
    );
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &daemon);
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &daemon);

    // DNS goes down, and a reload moves the state directory (a new one restores nothing) and
    // adds a static prefix: the relay's address, already in the map, stays until DNS answers.
    runtime.block_on(dns.stop());
    let moved = dir.path().join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("state-dir = \"{}\"", dir.arg()),
        &format!("state-dir = \"{}\"", moved.display()),
    ) + "allow = [\"198.51.100.0/24\"]\n";
    std::fs::write(&config, text).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_until("a failed lookup after the second reload", || {
        daemon.log().contains("DNS lookup failed")
    });
    assert_eq!(
        daemon.log().matches("configuration reloaded").count(),
        2,
        "{}",
        daemon.log_tail()
    );
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &daemon);
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}

#[test]
fn a_relay_known_only_through_an_spf_include_connects_and_guards_keep_the_rest_out() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (relay, direct) = (MailLab::RELAY, MailLab::DIRECT);
    let (_runtime, dns) = dns_in_server(&lab);
    // The relay's addresses arrive only through an include; the direct sender's too, but
    // outside the --dns-allow-within ranges; the top record tries to open everything.
    dns.set_txt(
        "_netblocks.mx.test",
        &["v=spf1 include:_relays.mx.test ip4:192.0.0.0/8 +all"],
        60,
    );
    dns.set_txt(
        "_relays.mx.test",
        &[&format!(
            "v=spf1 ip4:{} ip6:{} ip4:{} ip6:{} -all",
            relay.v4, relay.v6, direct.v4, direct.v6
        )],
        60,
    );
    // A name that answers with more addresses than the cap.
    dns.set(
        "many.mx.test",
        &[
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
            "192.0.2.5",
        ],
        60,
    );
    let state_dir = TempDir::new("dns-spf-e2e");
    let pins = TestPins::new();
    let mut command = lab.server.command(mxguard_bin());
    command
        .args([
            "run",
            "--iface",
            "eth0",
            "--allow-spf",
            "_netblocks.mx.test",
        ])
        .args(["--allow-host", "many.mx.test", "--dns-max-prefixes", "4"])
        .args(["--dns-allow-within", "192.0.2.0/28"])
        .args(["--dns-allow-within", "2001:db8::/123"])
        .args([
            "--dns-server",
            &dns.addr().to_string(),
            "--dns-timeout",
            "300ms",
        ])
        .args(["--state-dir", state_dir.0.to_str().expect("UTF-8 path")])
        .args(["--metrics-addr", "127.0.0.1:9725", "--stats-interval", "0"])
        .args(["--pin-dir", pins.arg(), "--detach-on-exit"])
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("enforcing", Duration::from_secs(30), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    daemon.wait_for("the attach", Duration::from_secs(10), |l| {
        l.contains("attached XDP filter")
    });
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &daemon);
    connects(&lab.relay, addr(MailLab::SERVER.v6, 25), &daemon);
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &daemon);
    times_out(&lab.direct, addr(MailLab::SERVER.v6, 25), &daemon);

    // Each guard said what it refused.
    let log = daemon.log();
    let refusal = |guard: &str, what: &str| {
        log.lines()
            .any(|l| l.contains("refused by a guard") && l.contains(guard) && l.contains(what))
    };
    assert!(refusal("min-prefix", "0.0.0.0/0"), "{log}");
    assert!(refusal("min-prefix", "192.0.0.0/8"), "{log}");
    assert!(
        refusal("allow-within", &format!("{}/32", direct.v4)),
        "{log}"
    );
    assert!(
        refusal("allow-within", &format!("{}/128", direct.v6)),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("over --dns-max-prefixes") && l.contains("many.mx.test")),
        "{log}"
    );

    // And counted it, per source.
    std::thread::sleep(Duration::from_millis(1500));
    let body = scrape_metrics(&lab.server, addr(std::net::Ipv4Addr::LOCALHOST, 9725));
    let sample = |name: &str, labels: &[(&str, &str)]| -> f64 {
        body.lines()
            .find(|l| {
                l.starts_with(name)
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{body}"))
    };
    let spf = [("kind", "spf"), ("source", "_netblocks.mx.test.")];
    let refusals = "mxguard_dns_source_refusals_total";
    assert!(sample(refusals, &[spf[0], spf[1], ("guard", "min-prefix")]) >= 3.0);
    assert!(sample(refusals, &[spf[0], spf[1], ("guard", "allow-within")]) >= 2.0);
    let many = [("kind", "host"), ("source", "many.mx.test.")];
    assert!(sample(refusals, &[many[0], many[1], ("guard", "max-prefixes")]) >= 1.0);
    assert!(
        sample(
            "mxguard_dns_source_failures_total",
            &[many[0], many[1], ("failure", "over-cap")]
        ) >= 1.0
    );
    assert_eq!(sample("mxguard_dns_source_entries", &spf), 2.0);
    assert!(sample("mxguard_dns_source_lookups_total", &spf) >= 1.0);
    assert!(sample("mxguard_dns_source_last_success_timestamp_seconds", &spf) > 1.7e9);

    // status names each prefix's origin chain.
    let status = status_json(
        &lab.server,
        pins.arg(),
        &["--state-dir", state_dir.0.to_str().unwrap()],
    );
    let origin = status["allowlist_origins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["prefix"] == format!("{}/32", relay.v4))
        .unwrap_or_else(|| panic!("{status:#}"));
    assert_eq!(
        origin["names"][0]["name"], "spf _netblocks.mx.test → include:_relays.mx.test",
        "{status:#}"
    );
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}

#[test]
fn with_dnssec_validation_a_signed_zone_admits_the_relay_and_an_unsigned_one_nothing() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let zone = SignedZone::sign(
        "mx.test",
        &format!(
            "relay IN A {}\nrelay IN AAAA {}\n_spf IN TXT \"v=spf1 a:relay.mx.test -all\"\n",
            MailLab::RELAY.v4,
            MailLab::RELAY.v6
        ),
    );
    let start = |named: &test_kit::bind::Named, state_dir: &TempDir, pins: &TestPins| {
        let mut command = lab.server.command(mxguard_bin());
        command
            .args(["run", "--iface", "eth0", "--allow-host", "relay.mx.test"])
            .args(["--allow-spf", "_spf.mx.test", "--dns-dnssec", "validate"])
            .args(["--dns-trust-anchor", zone.trust_anchor.to_str().unwrap()])
            .args([
                "--dns-server",
                &named.addr.to_string(),
                "--dns-timeout",
                "500ms",
            ])
            .args(["--state-dir", state_dir.arg(), "--stats-interval", "0"])
            .args(["--pin-dir", pins.arg(), "--detach-on-exit"])
            .env("RUST_LOG", "info");
        Daemon::spawn(command)
    };

    let signed = zone.serve_in(Variant::Signed, Some(&lab.server));
    let (state_dir, pins) = (TempDir::new("dnssec-e2e"), TestPins::new());
    let mut daemon = start(&signed, &state_dir, &pins);
    daemon.wait_for("enforcing", Duration::from_secs(30), |l| {
        l.contains("switching from MONITOR to enforcing")
    });
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &daemon);
    connects(&lab.relay, addr(MailLab::SERVER.v6, 25), &daemon);
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &daemon);
    assert!(
        !daemon.log().contains("DNSSEC validation failed"),
        "{}",
        daemon.log_tail()
    );
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
    drop(signed);

    // The same records unsigned: every answer is a failure; nothing is learnt.
    let unsigned = zone.serve_in(Variant::Unsigned, Some(&lab.server));
    let (state_dir, pins) = (TempDir::new("dnssec-e2e-unsigned"), TestPins::new());
    let mut daemon = start(&unsigned, &state_dir, &pins);
    daemon.wait_for("a refused host answer", Duration::from_secs(30), |l| {
        l.contains("DNSSEC validation failed") && l.contains("relay.mx.test")
    });
    daemon.wait_for("a refused SPF answer", Duration::from_secs(30), |l| {
        l.contains("DNSSEC validation failed") && l.contains("_spf.mx.test")
    });
    assert!(
        !daemon.log().contains("switching from MONITOR to enforcing"),
        "{}",
        daemon.log_tail()
    );
    assert!(daemon.stop().success(), "{}", daemon.log_tail());
}
