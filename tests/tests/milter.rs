//! The header-check milter through a real Postfix (docs/milter.md's table and actions, row by
//! row): the mail lab's server namespace runs a private Postfix on 192.0.2.1:25 whose
//! smtpd_milters point at `mxguard run --milter` (milter-only mode, so port 25 is not
//! filtered by XDP here) on the namespace's loopback; swaks sends real mail from the relay
//! (192.0.2.10, allowlisted) and the direct sender (192.0.2.66). Assertions are on the SMTP
//! reply, swaks' exit code (0 accepted, 26 refused after the data), Postfix's queue and log,
//! and mxguard's log and status.

use std::{net::SocketAddr, time::Duration};

use test_kit::{
    dns_server,
    lab::MailLab,
    postfix::{Postfix, PostfixConfig, Swaks, SwaksOutcome},
    process::{Daemon, mxguard_bin, status_json},
    root::require_root,
    temp_dir::TempDir,
};

const MILTER: &str = "inet:127.0.0.1:8891";
const SERVER_HEADER: &str = "X-MS.com-server";
const VERSION_HEADER: &str = "X-MS.com-version";

/// One lab with Postfix and (unless the test stops it) mxguard's milter. Fields drop in
/// order: the processes before the namespaces they run in.
struct Rig {
    mxguard: Option<Daemon>,
    postfix: Postfix,
    state: TempDir,
    lab: MailLab,
}

impl Rig {
    /// mxguard with the relay allowlisted and `extra` flags; Postfix with
    /// `milter_default_action = tempfail`.
    fn new(extra: &[&str]) -> Rig {
        require_root();
        let lab = MailLab::new();
        let state = TempDir::new("milter-state");
        let mxguard = Some(start_mxguard(&lab, &state, extra));
        let postfix = start_postfix(&lab, "tempfail");
        Rig {
            mxguard,
            postfix,
            state,
            lab,
        }
    }

    fn server() -> SocketAddr {
        SocketAddr::new(MailLab::SERVER.v4.into(), 25)
    }

    /// A mail from the relay carrying both headers, as the filtering service sends it.
    fn relay_mail(&self) -> Swaks {
        with_headers(Swaks::new(Self::server()).netns(&self.lab.relay))
    }

    /// A mail from the direct sender, without the headers.
    fn direct_mail(&self) -> Swaks {
        Swaks::new(Self::server()).netns(&self.lab.direct)
    }

    fn mxguard(&mut self) -> &mut Daemon {
        self.mxguard.as_mut().expect("mxguard runs")
    }

    fn context(&self) -> String {
        let mxguard = self
            .mxguard
            .as_ref()
            .map(Daemon::log_tail)
            .unwrap_or_default();
        format!("mxguard:\n{mxguard}\npostfix:\n{}", self.postfix.log_tail())
    }

    /// Waits until the milter's counters (from `mxguard status --json`) satisfy `ok`.
    fn wait_counters(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = status_json(
                &self.lab.server,
                "/nonexistent/mxguard-pins",
                &["--state-dir", self.state.arg()],
            );
            if ok(&status["milter"]) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "counters never showed {what}: {status:#}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until mxguard logged `needle` together with the mail's queue id and client.
    fn wait_logged(&mut self, sent: &SwaksOutcome, client: &str, needle: &str) -> String {
        let queue_id = sent.queue_id().map(str::to_owned);
        let client = format!("client={client}");
        let needle = needle.to_owned();
        self.mxguard()
            .wait_for("the milter's log line", Duration::from_secs(10), |line| {
                line.contains(&needle)
                    && line.contains(&client)
                    && queue_id
                        .as_ref()
                        .is_none_or(|id| line.contains(&format!("queue_id=\"{id}\"")))
            })
    }
}

fn with_headers(swaks: Swaks) -> Swaks {
    swaks
        .header(SERVER_HEADER, "mx1.mail-scanning.test")
        .header(VERSION_HEADER, "7.1")
}

fn start_mxguard(lab: &MailLab, state: &TempDir, extra: &[&str]) -> Daemon {
    let mut command = lab.server.command(mxguard_bin());
    command
        .args(["run", "--milter", MILTER])
        .args(["--allow", &MailLab::RELAY.v4.to_string()])
        .args(["--allow", &MailLab::RELAY.v6.to_string()])
        .args(["--state-dir", state.arg(), "--stats-interval", "0"])
        .args(extra)
        .env("RUST_LOG", "info");
    let mut daemon = Daemon::spawn(command);
    daemon.wait_for("the milter", Duration::from_secs(20), |l| {
        l.contains("milter listening")
    });
    daemon
}

fn start_postfix(lab: &MailLab, default_action: &str) -> Postfix {
    PostfixConfig::new(Rig::server())
        .netns(&lab.server)
        .milter(MILTER, default_action)
        .milter_timeout(Duration::from_secs(10))
        .start()
        .expect("starting Postfix in the server's namespace")
}

fn assert_accepted(sent: &SwaksOutcome, rig: &Rig) {
    assert_eq!(sent.code, 0, "{}\n{}", sent.transcript, rig.context());
}

/// Refused after the data with `reply` (swaks exit 26), and nothing queued or delivered.
fn assert_refused(sent: &SwaksOutcome, reply: &str, rig: &Rig) {
    assert_eq!(sent.code, 26, "{}\n{}", sent.transcript, rig.context());
    let got = sent.data_reply().unwrap_or_default();
    assert!(
        got.starts_with(reply),
        "reply {got:?}, want {reply:?}\n{}",
        sent.transcript
    );
}

#[test]
fn relay_with_the_headers_is_delivered() {
    let mut rig = Rig::new(&["--metrics-addr", "127.0.0.1:9725"]);
    let sent = rig.relay_mail().run();
    assert_accepted(&sent, &rig);
    let delivered = rig
        .postfix
        .wait_delivered(1, Duration::from_secs(10))
        .expect("delivery");
    assert!(
        delivered[0].contains("X-MS.com-server: mx1.mail-scanning.test"),
        "{}",
        delivered[0]
    );
    assert!(
        !delivered[0].contains("X-Mxguard-Verdict"),
        "{}",
        delivered[0]
    );
    rig.wait_counters("accepted=1", |m| m["accepted"] == 1 && m["missing"] == 0);
    let metrics = test_kit::process::scrape_metrics(
        &rig.lab.server,
        "127.0.0.1:9725".parse().expect("address"),
    );
    assert!(
        metrics.contains("mxguard_milter_verdicts_total{verdict=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mxguard_milter_connections_total{event=\"opened\"}"),
        "{metrics}"
    );
    let log = rig.mxguard().log();
    assert!(
        !log.contains("verdict="),
        "accepted mail is not logged at info:\n{log}"
    );
}

#[test]
fn direct_mail_without_the_headers_is_refused() {
    let mut rig = Rig::new(&[]);
    let sent = rig.direct_mail().run();
    assert_refused(&sent, "550 5.7.1 no X-MS.com-server header", &rig);
    rig.wait_logged(
        &sent,
        "192.0.2.66",
        "verdict=\"missing\" action=\"reject\" header=\"X-MS.com-server\"",
    );
    rig.postfix
        .wait_log("Postfix's milter-reject", Duration::from_secs(5), |log| {
            log.contains("milter-reject: END-OF-MESSAGE from unknown[192.0.2.66]: 5.7.1 no X-MS.com-server header")
        })
        .expect("Postfix logged the refusal");
    // One header present, the other missing: the missing one is named.
    let half = rig.direct_mail().header(SERVER_HEADER, "mx1").run();
    assert_refused(&half, "550 5.7.1 no X-MS.com-version header", &rig);
    // The relay without the headers is refused the same way (row 3 precedes the allowlist).
    let relay_bare = Swaks::new(Rig::server()).netns(&rig.lab.relay).run();
    assert_refused(&relay_bare, "550 5.7.1 no X-MS.com-server header", &rig);
    assert!(rig.postfix.delivered().is_empty());
    assert!(rig.postfix.queue().expect("postqueue").is_empty());
    rig.wait_counters("missing=3", |m| m["missing"] == 3 && m["accepted"] == 0);
}

#[test]
fn direct_mail_with_copied_headers_is_refused_as_forged() {
    let mut rig = Rig::new(&[]);
    let sent = with_headers(rig.direct_mail()).run();
    assert_refused(
        &sent,
        "550 5.7.1 the filtering service's headers, but not from one of its relays",
        &rig,
    );
    rig.wait_logged(&sent, "192.0.2.66", "verdict=\"forged\" action=\"reject\"");
    // A required header twice from a non-relay (row 5)...
    let twice = with_headers(rig.direct_mail())
        .header(SERVER_HEADER, "mx2")
        .run();
    assert_refused(
        &twice,
        "550 5.7.1 header X-MS.com-server more than once",
        &rig,
    );
    // ... but from the relay it is accepted (D6), and names match case-insensitively.
    let relay_twice = rig.relay_mail().header("x-ms.COM-SERVER", "mx2").run();
    assert_accepted(&relay_twice, &rig);
    rig.wait_counters("forged=2 accepted=1", |m| {
        m["forged"] == 2 && m["accepted"] == 1
    });
}

#[test]
fn an_exempt_client_is_delivered_without_the_headers() {
    let mut rig = Rig::new(&["--milter-exempt", &format!("{}/32", MailLab::DIRECT.v4)]);
    let sent = rig.direct_mail().run();
    assert_accepted(&sent, &rig);
    rig.postfix
        .wait_delivered(1, Duration::from_secs(10))
        .expect("delivery");
    rig.wait_counters("exempt=1", |m| m["exempt"] == 1 && m["missing"] == 0);
    assert!(!rig.mxguard().log().contains("verdict=\"missing\""));
}

#[test]
fn quarantine_puts_the_mail_in_the_hold_queue() {
    let mut rig = Rig::new(&["--milter-missing", "quarantine"]);
    let sent = rig.direct_mail().run();
    assert_accepted(&sent, &rig);
    let queue_id = sent.queue_id().expect("a queue id").to_owned();
    let hold = rig.postfix.hold_queue().expect("postqueue -j");
    assert_eq!(hold.len(), 1, "{hold:?}\n{}", rig.context());
    assert_eq!(hold[0].queue_id, queue_id);
    assert!(rig.postfix.delivered().is_empty());
    rig.wait_logged(
        &sent,
        "192.0.2.66",
        "verdict=\"missing\" action=\"quarantine\"",
    );
    rig.postfix
        .wait_log("Postfix's milter-hold", Duration::from_secs(5), |log| {
            log.contains(&format!("{queue_id}: milter-hold: END-OF-MESSAGE"))
        })
        .expect("Postfix logged the hold");
}

#[test]
fn tag_delivers_the_mail_carrying_the_verdict() {
    let rig = Rig::new(&["--milter-missing", "tag", "--milter-forged", "tag"]);
    let missing = rig.direct_mail().run();
    assert_accepted(&missing, &rig);
    // A sender's own verdict header does not survive: only mxguard's stands.
    let forged = with_headers(rig.direct_mail())
        .header("X-Mxguard-Verdict", "accepted")
        .run();
    assert_accepted(&forged, &rig);
    let delivered = rig
        .postfix
        .wait_delivered(2, Duration::from_secs(10))
        .expect("delivery");
    let tagged = |mail: &str, verdict: &str| {
        mail.lines()
            .filter(|l| l.starts_with("X-Mxguard-Verdict:"))
            .collect::<Vec<_>>()
            == [format!("X-Mxguard-Verdict: {verdict}").as_str()]
    };
    assert!(
        delivered.iter().any(|m| tagged(m, "missing")),
        "{delivered:#?}"
    );
    assert!(
        delivered.iter().any(|m| tagged(m, "forged")),
        "{delivered:#?}"
    );
    rig.wait_counters("missing=1 forged=1", |m| {
        m["missing"] == 1 && m["forged"] == 1
    });
}

#[test]
fn tempfail_and_discard() {
    let mut rig = Rig::new(&["--milter-forged", "tempfail", "--milter-missing", "discard"]);
    let forged = with_headers(rig.direct_mail()).run();
    assert_refused(&forged, "451 4.7.1 the filtering service's headers", &rig);
    rig.wait_logged(
        &forged,
        "192.0.2.66",
        "verdict=\"forged\" action=\"tempfail\"",
    );
    // Discard: the sender is told 250, and the mail is gone (D9).
    let discarded = rig.direct_mail().run();
    assert_accepted(&discarded, &rig);
    rig.wait_logged(
        &discarded,
        "192.0.2.66",
        "verdict=\"missing\" action=\"discard\"",
    );
    rig.postfix
        .wait_log("Postfix's milter-discard", Duration::from_secs(5), |log| {
            log.contains("milter-discard: END-OF-MESSAGE")
        })
        .expect("Postfix logged the discard");
    std::thread::sleep(Duration::from_millis(500));
    assert!(rig.postfix.delivered().is_empty());
    assert!(rig.postfix.queue().expect("postqueue").is_empty());
}

#[test]
fn milter_down_follows_milter_default_action() {
    let mut rig = Rig::new(&[]);
    assert!(rig.mxguard().stop().success(), "{}", rig.context());
    rig.mxguard = None;
    // tempfail (Postfix's default): smtpd finds no milter when the session starts and
    // answers MAIL FROM with 451 (swaks: 23); the sender keeps the mail and retries.
    let sent = rig.relay_mail().run();
    assert_eq!(sent.code, 23, "{}", sent.transcript);
    assert!(
        sent.transcript.contains("451 4.7.1"),
        "{}\n{}",
        sent.transcript,
        rig.context()
    );
    // accept: mail flows unchecked, even without the headers.
    rig.postfix
        .set_params(&[("milter_default_action", "accept")])
        .expect("reload");
    let sent = rig.direct_mail().run();
    assert_accepted(&sent, &rig);
    rig.postfix
        .wait_delivered(1, Duration::from_secs(10))
        .expect("delivery");
    // reject: every session is refused at the banner (554; swaks: 21), the relay's too.
    rig.postfix
        .set_params(&[("milter_default_action", "reject")])
        .expect("reload");
    let sent = rig.relay_mail().run();
    assert_eq!(sent.code, 21, "{}", sent.transcript);
    assert!(sent.transcript.contains("554 "), "{}", sent.transcript);
    // quarantine: accepted into the hold queue, unchecked.
    rig.postfix
        .set_params(&[("milter_default_action", "quarantine")])
        .expect("reload");
    let sent = rig.direct_mail().run();
    assert_accepted(&sent, &rig);
    assert_eq!(
        rig.postfix.hold_queue().expect("postqueue").len(),
        1,
        "{}",
        rig.context()
    );
    // The milter back: checks resume.
    rig.mxguard = Some(start_mxguard(&rig.lab, &rig.state, &[]));
    let sent = rig.relay_mail().run();
    assert_accepted(&sent, &rig);
    let sent = rig.direct_mail().run();
    assert_refused(&sent, "550 5.7.1 no X-MS.com-server header", &rig);
}

#[test]
fn sighup_changes_the_required_headers_for_the_next_mail() {
    require_root();
    let config = TempDir::new("milter-config");
    std::fs::create_dir_all(config.path()).expect("config dir");
    let file = config.path().join("mxguard.toml");
    std::fs::write(
        &file,
        "milter-require-header = [\"X-MS.com-server\", \"X-MS.com-version\"]\n",
    )
    .expect("config file");
    let mut rig = Rig::new(&["--config", file.to_str().expect("UTF-8")]);
    assert_accepted(&rig.relay_mail().run(), &rig);

    std::fs::write(&file, "milter-require-header = [\"X-Relay-Scanned\"]\n").expect("config file");
    let pid = nix::unistd::Pid::from_raw(rig.mxguard().id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    rig.mxguard()
        .wait_for("the reload", Duration::from_secs(10), |l| {
            l.contains("configuration reloaded")
        });
    let sent = rig.relay_mail().run();
    assert_refused(&sent, "550 5.7.1 no X-Relay-Scanned header", &rig);
    let sent = rig.relay_mail().header("X-Relay-Scanned", "yes").run();
    assert_accepted(&sent, &rig);

    // A bad file is refused and the running rule stays.
    std::fs::write(&file, "milter-require-header = [\"Bad Name\"]\n").expect("config file");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    rig.mxguard()
        .wait_for("the refused reload", Duration::from_secs(10), |l| {
            l.contains("reload rejected")
        });
    let sent = rig.relay_mail().run();
    assert_refused(&sent, "550 5.7.1 no X-Relay-Scanned header", &rig);
}

#[test]
fn an_allowlist_change_from_dns_decides_the_next_mail() {
    require_root();
    let lab = MailLab::new();
    let (_runtime, dns) = dns_server::serve_in(&lab.server);
    // The service's name points at the relay host.
    dns.set(
        "relay.mail-scanning.test",
        &[&MailLab::RELAY.v4.to_string()],
        1,
    );
    let state = TempDir::new("milter-dns");
    let mut command = lab.server.command(mxguard_bin());
    command
        .args([
            "run",
            "--milter",
            MILTER,
            "--allow-host",
            "relay.mail-scanning.test",
        ])
        .args([
            "--dns-server",
            &dns.addr().to_string(),
            "--dns-timeout",
            "300ms",
        ])
        .args(["--dns-min-refresh", "300ms", "--dns-max-refresh", "1s"])
        .args(["--state-dir", state.arg(), "--stats-interval", "0"])
        .env("RUST_LOG", "info");
    let mut mxguard = Daemon::spawn(command);
    mxguard.wait_for("the relay from DNS", Duration::from_secs(20), |l| {
        l.contains("milter allowlist updated") && l.contains("192.0.2.10/32")
    });
    let postfix = start_postfix(&lab, "tempfail");
    let server = Rig::server();
    let relay = || with_headers(Swaks::new(server).netns(&lab.relay)).run();
    let direct = || with_headers(Swaks::new(server).netns(&lab.direct)).run();
    let context = |mxguard: &Daemon| format!("{}\n{}", mxguard.log_tail(), postfix.log_tail());
    assert_eq!(relay().code, 0, "{}", context(&mxguard));
    assert_eq!(direct().code, 26, "{}", context(&mxguard));

    // The service moves its relay to the other host: the next mail follows DNS.
    dns.set(
        "relay.mail-scanning.test",
        &[&MailLab::DIRECT.v4.to_string()],
        1,
    );
    mxguard.wait_for("the move", Duration::from_secs(10), |l| {
        l.contains("milter allowlist updated") && l.contains("removed=[\"192.0.2.10/32\"]")
    });
    let moved = direct();
    assert_eq!(moved.code, 0, "{}\n{}", moved.transcript, context(&mxguard));
    let old = relay();
    assert_eq!(old.code, 26, "{}\n{}", old.transcript, context(&mxguard));
    assert!(
        old.transcript.contains("not from one of its relays"),
        "{}",
        old.transcript
    );
    drop(postfix);
    assert!(mxguard.stop().success(), "{}", mxguard.log_tail());
}
