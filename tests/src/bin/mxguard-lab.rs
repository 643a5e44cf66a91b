//! `cargo xtask run`: a throwaway mail-gateway lab that shows mxguard at work.
//!
//! Builds the `MailLab` namespaces (switch, mail server, relay, direct sender), starts a real
//! Postfix on the server with mxguard's header-check milter, attaches the real `mxguard`
//! binary to the server's eth0 with the relay allowlisted, then every few seconds tries the
//! connections and mails an operator cares about and prints what happened next to what
//! should happen, with both layers' counters. Ctrl-C (or `--rounds N`) stops mxguard and
//! Postfix and removes every namespace.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use test_kit::{
    dns_server::{TestDns, bind_pair},
    lab::MailLab,
    netns::Netns,
    pins::TestPins,
    postfix::{PostfixConfig, Swaks},
    process::{Daemon, mxguard_bin},
};

/// Where Postfix on the lab's server reaches mxguard's milter.
const MILTER: &str = "inet:127.0.0.1:8891";

/// The relay's DNS name, served by a DNS server inside the lab.
const RELAY_NAME: &str = "relay.mail-scanning.test";

struct Check<'a> {
    label: &'static str,
    from: &'a Netns,
    to: SocketAddr,
    should_connect: bool,
}

fn main() -> std::process::ExitCode {
    let rounds = parse_rounds();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).expect("installing the signal handler");
    }

    println!("mxguard lab: building namespaces (documentation addresses only)");
    let lab = MailLab::new();
    let server = MailLab::SERVER;
    println!("  switch      {}", lab.switch.name());
    println!(
        "  mail server {}  eth0 {} {}",
        lab.server.name(),
        server.v4,
        server.v6
    );
    println!(
        "  relay       {}  eth0 {} {}  (the filtering service)",
        lab.relay.name(),
        MailLab::RELAY.v4,
        MailLab::RELAY.v6
    );
    println!(
        "  direct      {}  eth0 {} {}  (a spammer skipping the MX)",
        lab.direct.name(),
        MailLab::DIRECT.v4,
        MailLab::DIRECT.v6
    );

    // The mail server is a real Postfix whose smtpd asks mxguard's milter about every mail.
    let postfix = PostfixConfig::new(SocketAddr::new(IpAddr::V4(server.v4), 25))
        .also_listen(SocketAddr::new(IpAddr::V6(server.v6), 25))
        .netns(&lab.server)
        .milter(MILTER, "tempfail")
        .start()
        .unwrap_or_else(|error| panic!("starting the lab's Postfix: {error:#}"));
    println!(
        "  postfix     on the server, port 25, smtpd_milters = {MILTER} (config {})",
        postfix.config_dir().display()
    );
    let _submission = lab.server.listen(587);
    let _far_mx = lab.direct.listen(25);

    // The filtering service publishes its relay by name: a DNS server on the relay host
    // answers for relay.mail-scanning.test with the relay's IPv4 and IPv6 addresses.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime for the lab's DNS server");
    let (udp, tcp) = lab
        .relay
        .enter(|| bind_pair(IpAddr::V4(MailLab::RELAY.v4)))
        .expect("entering the relay's namespace");
    let dns = runtime.block_on(async { TestDns::serve(udp, tcp) });
    let relay_v4 = MailLab::RELAY.v4.to_string();
    let relay_v6 = MailLab::RELAY.v6.to_string();
    dns.set(RELAY_NAME, &[&relay_v4, &relay_v6], 30);
    println!(
        "  dns         {} on the relay: {RELAY_NAME} -> {relay_v4}, {relay_v6}",
        dns.addr()
    );

    // Private pins and state, removed at the end: the lab never touches a real installation.
    let pins = TestPins::new();
    let state_dir = std::env::temp_dir().join(format!("mxguard-lab-{}", std::process::id()));
    let dns_server = dns.addr().to_string();
    let args = [
        "run",
        "--iface",
        "eth0",
        "--allow-host",
        RELAY_NAME,
        "--dns-server",
        &dns_server,
        "--state-dir",
        state_dir.to_str().expect("UTF-8 temp dir"),
        "--pin-dir",
        pins.arg(),
        "--detach-on-exit",
        "--stats-interval",
        "1s",
        "--milter",
        MILTER,
    ];
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(args)
        .env("RUST_LOG", "info")
        // Its own process group: Ctrl-C reaches the lab, which then stops mxguard in order.
        .process_group(0);
    println!(
        "\nstarting in {}: mxguard {}",
        lab.server.name(),
        args.join(" ")
    );
    let mut mxguard = Daemon::spawn(command);
    let attached = mxguard.wait_for("mxguard to attach", Duration::from_secs(30), |l| {
        l.contains("attached XDP filter")
    });
    println!("  mxguard: {}", attached.trim());
    let filled = mxguard.wait_for(
        "the relay's addresses from DNS",
        Duration::from_secs(30),
        |l| l.contains("allowlist map updated") && l.contains(&relay_v4),
    );
    println!("  mxguard: {}", filled.trim());

    let v4 = |ip: std::net::Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
    let v6 = |ip: std::net::Ipv6Addr, port| SocketAddr::new(IpAddr::V6(ip), port);
    let checks = [
        Check {
            label: "relay  -> server:25   IPv4",
            from: &lab.relay,
            to: v4(server.v4, 25),
            should_connect: true,
        },
        Check {
            label: "relay  -> server:25   IPv6",
            from: &lab.relay,
            to: v6(server.v6, 25),
            should_connect: true,
        },
        Check {
            label: "direct -> server:25   IPv4",
            from: &lab.direct,
            to: v4(server.v4, 25),
            should_connect: false,
        },
        Check {
            label: "direct -> server:25   IPv6",
            from: &lab.direct,
            to: v6(server.v6, 25),
            should_connect: false,
        },
        Check {
            label: "direct -> server:587  IPv4",
            from: &lab.direct,
            to: v4(server.v4, 587),
            should_connect: true,
        },
        Check {
            label: "direct -> server:587  IPv6",
            from: &lab.direct,
            to: v6(server.v6, 587),
            should_connect: true,
        },
        Check {
            label: "server -> direct:25   IPv4 (outgoing mail)",
            from: &lab.server,
            to: v4(MailLab::DIRECT.v4, 25),
            should_connect: true,
        },
        Check {
            label: "server -> direct:25   IPv6 (outgoing mail)",
            from: &lab.server,
            to: v6(MailLab::DIRECT.v6, 25),
            should_connect: true,
        },
    ];

    // Mails: the relay's carry the filtering service's headers; one without them (as if it
    // had skipped the service) is refused by the milter with the reason.
    let to_server = SocketAddr::new(IpAddr::V4(server.v4), 25);
    let mails = [
        (
            "relay  -> server:25   mail with the headers",
            Swaks::new(to_server)
                .netns(&lab.relay)
                .header("X-MS.com-server", "mx1.mail-scanning.test")
                .header("X-MS.com-version", "7.1"),
            true,
        ),
        (
            "relay  -> server:25   mail without them",
            Swaks::new(to_server).netns(&lab.relay),
            false,
        ),
    ];

    let mut failures = 0;
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) && rounds.is_none_or(|n| round < n) {
        round += 1;
        println!("\nround {round}");
        for check in &checks {
            let result = check.from.connect(check.to, Duration::from_millis(1000));
            let (got, ok) = match (&result, check.should_connect) {
                (Ok(_), true) => ("connected", true),
                (Ok(_), false) => ("connected", false),
                (Err(e), false) if e.kind() == std::io::ErrorKind::TimedOut => {
                    ("timed out: SYN dropped", true)
                }
                (Err(_), _) => ("failed", false),
            };
            if !ok {
                failures += 1;
            }
            let want = if check.should_connect {
                "connect"
            } else {
                "be dropped"
            };
            println!(
                "  {:<44} {:<24} should {want:<10} {}",
                check.label,
                got,
                if ok { "ok" } else { "WRONG" }
            );
        }
        for (label, mail, should_accept) in &mails {
            let sent = mail.run();
            let reply = sent
                .data_reply()
                .unwrap_or("no reply to the data")
                .to_owned();
            let ok = (sent.code == 0) == *should_accept;
            if !ok {
                failures += 1;
            }
            let want = if *should_accept {
                "be accepted"
            } else {
                "be refused"
            };
            println!(
                "  {label:<44} should {want:<11} {}\n      {reply}",
                if ok { "ok" } else { "WRONG" }
            );
        }
        std::thread::sleep(Duration::from_millis(1100));
        let log = mxguard.log();
        if let Some(line) = log.lines().rev().find(|l| l.contains("counters ")) {
            println!(
                "  xdp     {}",
                line.split("counters ")
                    .nth(1)
                    .unwrap_or(line)
                    .replace(" | ", "\n          ")
            );
        }
        if let Some(line) = log.lines().rev().find(|l| l.contains("milter accepted=")) {
            println!("  milter  {}", line.split("milter ").nth(1).unwrap_or(line));
        }
        if rounds.is_none() {
            println!("(Ctrl-C stops mxguard and removes the lab)");
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    println!("\nstopping mxguard and removing the lab");
    let status = mxguard.stop();
    if let Some(line) = mxguard.log().lines().rev().find(|l| l.contains("detached")) {
        println!("  mxguard: {}", line.trim());
    }
    drop(postfix);
    drop(dns);
    drop(runtime);
    drop(lab);
    drop(pins);
    let _ = std::fs::remove_dir_all(&state_dir);
    if failures > 0 || !status.success() {
        println!("{failures} check(s) gave the wrong result; mxguard exited with {status}");
        return std::process::ExitCode::FAILURE;
    }
    println!("all checks as expected");
    std::process::ExitCode::SUCCESS
}

fn parse_rounds() -> Option<u32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => None,
        [flag, n] if flag == "--rounds" => Some(n.parse().expect("--rounds takes a number")),
        _ => {
            eprintln!("usage: mxguard-lab [--rounds N]");
            std::process::exit(2);
        }
    }
}
