//! End to end with DNS: the real `mxguard` binary in the mail server's namespace learns the
//! relay's addresses from a real DNS server (on the namespace's loopback), and real TCP
//! connections to port 25 pass or die at the XDP filter accordingly; the relay moving in DNS
//! moves the filter; a restart with DNS gone restores the last answer from the state file.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use test_kit::{
    dns_server::{TestDns, bind_pair},
    lab::MailLab,
    netns::{Netns, assert_connects, assert_times_out},
    pins::TestPins,
    process::{Daemon, mxguard_bin, status_json},
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

/// A state directory unique to the test, removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

#[test]
fn dns_answers_decide_who_reaches_port_25() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let (server_v4, server_v6) = (MailLab::SERVER.v4, MailLab::SERVER.v6);
    let (relay, direct) = (MailLab::RELAY, MailLab::DIRECT);

    // The DNS server listens on the server namespace's loopback; this process serves it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (udp, tcp) = lab
        .server
        .enter(|| bind_pair("127.0.0.1".parse().expect("loopback")))
        .expect("entering the server's namespace");
    let mut dns = {
        let _inside = runtime.enter();
        TestDns::serve(udp, tcp)
    };
    dns.set(
        "relay.mx.test",
        &[&relay.v4.to_string(), &relay.v6.to_string()],
        1,
    );
    let state_dir =
        TempDir(std::env::temp_dir().join(format!("mxguard-dns-e2e-{}", std::process::id())));

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (udp, tcp) = lab
        .server
        .enter(|| bind_pair("127.0.0.1".parse().expect("loopback")))
        .expect("entering the server's namespace");
    let mut dns = {
        let _inside = runtime.enter();
        TestDns::serve(udp, tcp)
    };
    dns.set("relay.mx.test", &[&MailLab::RELAY.v4.to_string()], 60);
    let state_dir =
        TempDir(std::env::temp_dir().join(format!("mxguard-dns-lost-{}", std::process::id())));
    let pins = TestPins::new();
    let dns_addr = dns.addr().to_string();
    // Both runs keep their pins: the second must take over the first one's maps.
    let start = || {
        let mut command = lab.server.command(mxguard_bin());
        command
            .args(["run", "--iface", "eth0", "--allow-host", "relay.mx.test"])
            .args(["--dns-server", &dns_addr, "--dns-timeout", "300ms"])
            .args(["--state-dir", state_dir.0.to_str().expect("UTF-8 path")])
            .args(["--stats-interval", "0", "--pin-dir", pins.arg()])
            .env("RUST_LOG", "info");
        Daemon::spawn(command)
    };
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
    second.wait_for("the pinned allowlist kept", Duration::from_secs(30), |l| {
        l.contains("keeping the pinned allowlist")
    });
    second.wait_for("the attach", Duration::from_secs(10), |l| {
        l.contains("attached XDP filter")
    });
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25), &second);
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25), &second);
    assert!(
        !second.log().contains("MONITOR mode"),
        "{}",
        second.log_tail()
    );
    assert!(second.stop().success());
}
