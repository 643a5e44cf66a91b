//! End to end: the real `mxguard` binary attached to a veth in a mail-gateway lab of network
//! namespaces, with real TCP connections over IPv4 and IPv6.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use test_kit::{
    lab::MailLab,
    netns::{Netns, assert_connects, assert_times_out},
    pins::TestPins,
    process::{Daemon, mxguard_bin, scrape_metrics},
};

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// `mxguard run ARGS` in `netns`, pinned under `pins`.
fn mxguard_in(netns: &Netns, pins: &TestPins, args: &[&str]) -> Daemon {
    let mut command = netns.command(mxguard_bin());
    command
        .arg("run")
        .args(args)
        .args(["--pin-dir", pins.arg()])
        .env("RUST_LOG", "info");
    Daemon::spawn(command)
}

/// `mxguard run ARGS` in `netns`, returned once it has attached.
fn attached(netns: &Netns, pins: &TestPins, args: &[&str]) -> Daemon {
    let mut daemon = mxguard_in(netns, pins, args);
    daemon.wait_for("the attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    daemon
}

/// Starts mxguard on the server's eth0 with the relay allowlisted.
fn start_filter(lab: &MailLab, pins: &TestPins, mode: &str) -> Daemon {
    let relay_v4 = format!("{}/32", MailLab::RELAY.v4);
    let relay_v6 = format!("{}/128", MailLab::RELAY.v6);
    attached(
        &lab.server,
        pins,
        &[
            "--detach-on-exit",
            "--iface",
            "eth0",
            "--mode",
            mode,
            "--allow",
            &relay_v4,
            "--allow",
            &relay_v6,
            "--stats-interval",
            "200ms",
        ],
    )
}

fn connects(from: &Netns, to: SocketAddr) {
    assert_connects(from, to, "");
}

fn times_out(from: &Netns, to: SocketAddr) {
    assert_times_out(from, to, "");
}

/// Reads `field` of `family` from the newest counter summary line in the log.
fn counter(log: &str, family: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("counters "))
        .expect("a counter summary line");
    let section = line
        .split(" | ")
        .find_map(|part| {
            part.split_once(&format!("{family}: "))
                .map(|(_, rest)| rest)
        })
        .unwrap_or_else(|| panic!("no {family} section in {line}"));
    section
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {line}"))
}

fn xdp_attached(netns: &Netns, iface: &str) -> bool {
    let output = std::process::Command::new("ip")
        .args(["-n", netns.name(), "link", "show", iface])
        .output()
        .expect("ip link show");
    String::from_utf8_lossy(&output.stdout).contains("xdp")
}

fn filters_smtp_syns(mode: &str, expect_log: &str) {
    let lab = MailLab::new();
    let smtp = lab.server.listen(25);
    let _submission = lab.server.listen(587);
    let (server_v4, server_v6) = (MailLab::SERVER.v4, MailLab::SERVER.v6);

    // Without the filter the direct sender reaches port 25: the drop below is the filter's doing.
    connects(&lab.direct, addr(server_v4, 25));
    connects(&lab.direct, addr(server_v6, 25));

    let pins = TestPins::new();
    let mut daemon = start_filter(&lab, &pins, mode);
    daemon.wait_for("the mode", Duration::from_secs(5), |l| {
        l.contains(expect_log)
    });
    assert!(xdp_attached(&lab.server, "eth0"));

    let accepted_before = smtp.accepted();
    connects(&lab.relay, addr(server_v4, 25));
    connects(&lab.relay, addr(server_v6, 25));
    times_out(&lab.direct, addr(server_v4, 25));
    times_out(&lab.direct, addr(server_v6, 25));
    // Submission is not a protected port.
    connects(&lab.direct, addr(server_v4, 587));
    connects(&lab.direct, addr(server_v6, 587));
    // The server's own outgoing mail to another host's port 25: the SYN-ACK must pass.
    let _far_mx = lab.direct.listen(25);
    connects(&lab.server, addr(MailLab::DIRECT.v4, 25));
    connects(&lab.server, addr(MailLab::DIRECT.v6, 25));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        smtp.accepted() - accepted_before,
        2,
        "only the relay's connections reached port 25"
    );

    daemon.wait_for("drop counters", Duration::from_secs(5), |l| {
        l.contains("counters ")
            && counter(l, "ipv4", "syn_dropped") >= 1
            && counter(l, "ipv6", "syn_dropped") >= 1
    });
    let log = daemon.log();
    assert!(
        counter(&log, "ipv4", "syn_allowed") >= 1,
        "{}",
        daemon.log_tail()
    );
    assert!(
        counter(&log, "ipv6", "syn_allowed") >= 1,
        "{}",
        daemon.log_tail()
    );

    let status = daemon.stop();
    assert!(
        status.success(),
        "mxguard exit status {status}:\n{}",
        daemon.log_tail()
    );
    assert!(
        daemon.log().contains("detached; bye"),
        "{}",
        daemon.log_tail()
    );
    assert!(
        !xdp_attached(&lab.server, "eth0"),
        "SIGTERM with --detach-on-exit must detach"
    );
    connects(&lab.direct, addr(server_v4, 25));
}

#[test]
fn native_mode_drops_direct_smtp_syns_and_passes_the_rest() {
    filters_smtp_syns("native", "mode=native");
}

#[test]
fn generic_mode_drops_direct_smtp_syns_and_passes_the_rest() {
    filters_smtp_syns("generic", "mode=generic");
}

#[test]
fn auto_mode_gets_native_on_veth() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let mut daemon = start_filter(&lab, &pins, "auto");
    daemon.wait_for("the mode", Duration::from_secs(5), |l| {
        l.contains("mode=native")
    });
    assert!(daemon.stop().success());
}

#[test]
fn protects_a_non_standard_port() {
    let lab = MailLab::new();
    let _smtp = lab.server.listen(25);
    let _alt = lab.server.listen(2525);
    let pins = TestPins::new();
    let mut daemon = attached(
        &lab.server,
        &pins,
        &["--iface", "eth0", "--port", "2525", "--allow", "192.0.2.10"],
    );
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 2525));
    connects(&lab.relay, addr(MailLab::SERVER.v4, 2525));
    connects(&lab.direct, addr(MailLab::SERVER.v4, 25));
    assert!(daemon.stop().success());
}

/// Runs mxguard with bad input; it must fail with `message` and leave nothing attached.
fn rejected(args: &[&str], message: &str) {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let mut daemon = mxguard_in(&lab.server, &pins, args);
    let status = daemon.wait_exit(Duration::from_secs(30));
    assert!(
        !status.success(),
        "mxguard should fail for {args:?}:\n{}",
        daemon.log_tail()
    );
    assert!(
        daemon.log().contains(message),
        "expected {message:?} in:\n{}",
        daemon.log_tail()
    );
    assert!(
        !xdp_attached(&lab.server, "eth0"),
        "nothing may stay attached after {args:?}"
    );
}

#[test]
fn bad_input_is_rejected_before_anything_is_attached() {
    rejected(
        &["--iface", "eth0", "--allow", "192.0.2.300/24"],
        "invalid CIDR \"192.0.2.300/24\"",
    );
    rejected(
        &["--iface", "eth0", "--iface", "eth9"],
        "unknown interface \"eth9\"",
    );
    rejected(
        &["--iface", "eth0", "--port", "0"],
        "port 0 is out of range",
    );
    rejected(
        &["--iface", "eth0", "--port", "70000"],
        "port 70000 is out of range",
    );
    rejected(
        &["--iface", "eth0", "--allow-file", "/nonexistent/allow"],
        "cannot read allow file",
    );
}

#[test]
fn a_failed_attach_detaches_what_was_attached() {
    // eth0 takes native XDP, lo does not: the whole run must fail and eth0 be left clean.
    rejected(
        &["--iface", "eth0", "--iface", "lo", "--mode", "native"],
        "attaching XDP (Native) to lo",
    );
}

#[test]
fn reject_action_refuses_the_connection_at_once() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    // Generic mode: on veth, native XDP_TX needs an XDP program on the peer as well.
    let mut daemon = attached(
        &lab.server,
        &pins,
        &[
            "--iface",
            "eth0",
            "--mode",
            "generic",
            "--action",
            "reject",
            "--allow",
            "192.0.2.10",
            "--stats-interval",
            "200ms",
        ],
    );
    for to in [addr(MailLab::SERVER.v4, 25), addr(MailLab::SERVER.v6, 25)] {
        let started = std::time::Instant::now();
        let error = lab
            .direct
            .connect(to, Duration::from_secs(5))
            .expect_err("denied");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{to}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "refused at once, not after a timeout"
        );
    }
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25));
    daemon.wait_for("reject counters", Duration::from_secs(5), |l| {
        l.contains("counters ")
            && counter(l, "ipv4", "syn_rejected") >= 1
            && counter(l, "ipv6", "syn_rejected") >= 1
    });
    assert!(daemon.stop().success());
}

#[test]
fn monitor_action_passes_everything_and_counts_would_be_drops() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut daemon = attached(
        &lab.server,
        &pins,
        &[
            "--iface",
            "eth0",
            "--action",
            "monitor",
            "--allow",
            "192.0.2.10",
            "--stats-interval",
            "200ms",
        ],
    );
    connects(&lab.direct, addr(MailLab::SERVER.v4, 25));
    connects(&lab.direct, addr(MailLab::SERVER.v6, 25));
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25));
    daemon.wait_for("would-drop counters", Duration::from_secs(5), |l| {
        l.contains("counters ")
            && counter(l, "ipv4", "syn_would_drop") >= 1
            && counter(l, "ipv6", "syn_would_drop") >= 1
            && counter(l, "ipv4", "syn_allowed") >= 1
    });
    let log = daemon.log();
    assert_eq!(counter(&log, "ipv4", "syn_dropped"), 0);
    assert!(daemon.stop().success());
}

#[test]
fn metrics_endpoint_is_scraped_and_parsed() {
    let lab = MailLab::new();
    let pins = TestPins::new();
    let _smtp = lab.server.listen(25);
    let mut daemon = attached(
        &lab.server,
        &pins,
        &[
            "--iface",
            "eth0",
            "--allow",
            "192.0.2.10",
            "--allow",
            "2001:db8::/126",
            "--metrics-addr",
            "127.0.0.1:9725",
        ],
    );
    times_out(&lab.direct, addr(MailLab::SERVER.v4, 25));
    connects(&lab.relay, addr(MailLab::SERVER.v4, 25));
    std::thread::sleep(Duration::from_millis(1500));

    let body = scrape_metrics(&lab.server, addr(std::net::Ipv4Addr::LOCALHOST, 9725));
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{body}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected value {other:?}"),
        }
    };
    assert!(
        value(
            "mxguard_protected_syns_total",
            &[("family", "ipv4"), ("verdict", "dropped")]
        ) >= 1.0
    );
    assert!(
        value(
            "mxguard_protected_syns_total",
            &[("family", "ipv4"), ("verdict", "allowed")]
        ) >= 1.0
    );
    assert!(value("mxguard_frames_total", &[("family", "ipv4")]) >= 2.0);
    assert_eq!(
        value("mxguard_allowlist_entries", &[("family", "ipv4")]),
        1.0
    );
    assert_eq!(
        value("mxguard_allowlist_entries", &[("family", "ipv6")]),
        1.0
    );
    assert_eq!(
        value(
            "mxguard_attached",
            &[("interface", "eth0"), ("mode", "native")]
        ),
        1.0
    );
    assert!(daemon.stop().success());
}
