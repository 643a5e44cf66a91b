//! The milter's protocol edge cases, in-process: filter-user's milter server on loopback and
//! miltr-client (plus raw frames where the client has no call: macros and an abort that keeps
//! the connection) as the MTA. The authenticated-session exemption, the MAIL-stage macros,
//! abort and several messages per connection, garbage and oversized packets, a peer vanishing
//! mid-message, an idle peer, hundreds of concurrent connections and the connection bound.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use filter_user::milter::{
    DEFAULT_IDLE_TIMEOUT, MilterAction, MilterEndpoint, MilterHandle, MilterSettings, Policy,
    Rules, stats::MilterCounts,
};
use miltr_client::{Client, Connection, ResponseError};
use miltr_common::{
    actions::Action,
    commands::{Connect, Family, Header},
    decoding::ServerCommand,
    modifications::{ModificationAction, ModificationResponse},
    optneg::{Capability, OptNeg, Protocol},
};
use test_kit::{postfix::free_addr, temp_dir::TempDir};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

const RELAY: &str = "192.0.2.10";
const DIRECT: &str = "203.0.113.9";
const BOTH: &[(&str, &str)] = &[("X-MS.com-server", "mx1"), ("X-MS.com-version", "7")];

/// A milter server with the default rules, the relay allowlisted.
struct Server {
    handle: MilterHandle,
    addr: SocketAddr,
    _state: TempDir,
}

impl Server {
    fn start(max_connections: usize, on_missing: MilterAction) -> Server {
        Server::start_idle(max_connections, on_missing, DEFAULT_IDLE_TIMEOUT)
    }

    /// As [`Server::start`], closing connections idle for `idle_timeout`.
    fn start_idle(
        max_connections: usize,
        on_missing: MilterAction,
        idle_timeout: Duration,
    ) -> Server {
        let addr = free_addr(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let settings = MilterSettings {
            endpoint: MilterEndpoint::Inet(addr),
            policy: Policy {
                rules: Rules {
                    required: vec![
                        "X-MS.com-server".parse().unwrap(),
                        "X-MS.com-version".parse().unwrap(),
                    ],
                    exempt: vec!["127.0.0.0/8".parse().unwrap()],
                },
                on_missing,
                on_forged: MilterAction::Reject,
            },
            max_connections,
            idle_timeout,
        };
        let state = TempDir::new("milter-protocol");
        let allow = BTreeSet::from([RELAY.parse().unwrap()]);
        let handle = MilterHandle::bind(&settings, state.path())
            .expect("binding the milter")
            .serve(&allow);
        Server {
            handle,
            addr,
            _state: state,
        }
    }

    fn counts(&self) -> MilterCounts {
        self.handle.counts()
    }
}

/// An MTA side of one milter connection: miltr-client, and a second handle on the same
/// socket for the frames the client cannot send (they get no answer, so nothing is read).
struct Mta {
    connection: Connection<Compat<tokio::net::TcpStream>>,
    raw: std::net::TcpStream,
}

/// What the milter answered for a message.
#[derive(Debug)]
enum Answered {
    /// At the end of the message, with these modifications.
    Accepted(Vec<ModificationAction>),
    /// Refused at the end of the message with this SMTP reply: the answer to the end of the
    /// headers was one the MTA agreed to go without (SMFIP_NR_EOH, docs/milter.md D11).
    Refused(String),
    /// Refused at the end of the headers: an MTA that offered no no-reply steps.
    RefusedAtEndOfHeaders(String),
}

impl Mta {
    /// Connects, negotiates as Postfix does (offering every protocol flag) and sends the
    /// SMTP client's address.
    async fn open(server: &Server, client: &str) -> Mta {
        Mta::open_offering(server, client, Protocol::all()).await
    }

    /// As [`Mta::open`], offering only `protocol` (an MTA without the no-reply steps answers
    /// a refusal at the end of the headers).
    async fn open_offering(server: &Server, client: &str, protocol: Protocol) -> Mta {
        let options = OptNeg {
            protocol,
            ..OptNeg::default()
        };
        Mta::open_negotiating(server, client, options).await
    }

    /// As [`Mta::open`], negotiating `options` (the MTA's protocol steps and capabilities).
    async fn open_negotiating(server: &Server, client: &str, options: OptNeg) -> Mta {
        // Connected asynchronously: the server runs on this runtime too.
        let stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connecting to the milter")
            .into_std()
            .expect("a std stream");
        let raw = stream.try_clone().expect("a second handle");
        let stream = tokio::net::TcpStream::from_std(stream)
            .expect("tokio stream")
            .compat();
        let mut connection = Client::new(options)
            .connect_via(stream)
            .await
            .expect("option negotiation");
        connection
            .connect(Connect::new(
                b"client.test",
                Family::Inet,
                Some(25),
                client.as_bytes(),
            ))
            .await
            .expect("connect");
        Mta { connection, raw }
    }

    /// A raw frame: length, command code, payload.
    fn frame(&mut self, code: u8, payload: &[u8]) {
        let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(code);
        frame.extend_from_slice(payload);
        self.raw.write_all(&frame).expect("writing a raw frame");
    }

    /// SMFIC_MACRO for the MAIL stage, as Postfix sends it just before MAIL FROM.
    fn mail_macros(&mut self, macros: &[(&str, &str)]) {
        let mut payload = vec![b'M'];
        for (name, value) in macros {
            payload.extend_from_slice(name.as_bytes());
            payload.push(0);
            payload.extend_from_slice(value.as_bytes());
            payload.push(0);
        }
        self.frame(b'D', &payload);
    }

    /// SMFIC_ABORT: the transaction ends (RSET), the connection stays.
    fn abort(&mut self) {
        self.frame(b'A', &[]);
    }

    async fn start_message(&mut self, headers: &[(&str, &str)]) {
        self.connection
            .mail(b"<sender@relay.test>".as_slice())
            .await
            .expect("MAIL");
        for (name, value) in headers {
            self.connection
                .header(Header::new(name.as_bytes(), value.as_bytes()))
                .await
                .expect("header");
        }
    }

    /// One whole message: MAIL, the headers, end of headers and (unless refused there) the
    /// end of the message. With the no-reply steps negotiated, a refusal comes at the end of
    /// the message; without, at the end of the headers.
    async fn message(&mut self, headers: &[(&str, &str)]) -> Answered {
        self.start_message(headers).await;
        match self.connection.end_of_header().await {
            Ok(()) => {}
            Err(ResponseError::Unexpected(ServerCommand::Replycode(reply))) => {
                return Answered::RefusedAtEndOfHeaders(reply_text(&reply));
            }
            Err(error) => panic!("end of headers: {error}"),
        }
        let response: ModificationResponse =
            self.connection.end_of_body().await.expect("end of message");
        match response.final_action() {
            Action::Continue(_) => Answered::Accepted(response.modifications().to_vec()),
            Action::Replycode(reply) => Answered::Refused(reply_text(reply)),
            other => panic!("end of message answered {other:?}"),
        }
    }
}

/// "550 5.7.1 text", as Postfix would show it.
fn reply_text(reply: &miltr_common::actions::Replycode) -> String {
    let code: String = reply.rcode().code().iter().map(u8::to_string).collect();
    let enhanced: Vec<String> = reply
        .xcode()
        .iter()
        .flat_map(|x| x.code())
        .map(|n| n.to_string())
        .collect();
    format!("{code} {} {}", enhanced.join("."), reply.message())
}

fn assert_accepted(answered: &Answered) {
    assert!(
        matches!(answered, Answered::Accepted(mods) if mods.is_empty()),
        "{answered:?}"
    );
}

fn assert_refused(answered: &Answered, reply: &str) {
    assert!(
        matches!(answered, Answered::Refused(text) if text.starts_with(reply)),
        "{answered:?}, want {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_session_is_exempt_for_all_its_messages() {
    let server = Server::start(16, MilterAction::Reject);
    let mut mta = Mta::open(&server, DIRECT).await;
    mta.mail_macros(&[("i", "4XyZ1"), ("{auth_authen}", "alice")]);
    assert_accepted(&mta.message(&[]).await);
    // The next transaction of the same session: AUTH cannot be undone.
    mta.abort();
    assert_accepted(&mta.message(&[("Subject", "second")]).await);
    // An empty {auth_authen} is no authentication.
    let mut other = Mta::open(&server, DIRECT).await;
    other.mail_macros(&[("i", "4XyZ2"), ("{auth_authen}", "")]);
    assert_refused(
        &other.message(&[]).await,
        "550 5.7.1 no X-MS.com-server header",
    );
    let counts = server.counts();
    assert_eq!((counts.exempt, counts.missing), (2, 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_without_the_no_reply_steps_gets_every_answer() {
    let server = Server::start(16, MilterAction::Reject);
    let old_style = Protocol::all()
        - (Protocol::NR_CONNECT
            | Protocol::NR_HELO
            | Protocol::NR_MAIL
            | Protocol::NR_RECIPIENT
            | Protocol::NR_HEADER
            | Protocol::NR_END_OF_HEADER
            | Protocol::NR_DATA
            | Protocol::NR_BODY
            | Protocol::NR_UNKNOWN);
    let mut mta = Mta::open_offering(&server, DIRECT, old_style).await;
    let answered = mta.message(&[]).await;
    assert!(
        matches!(&answered, Answered::RefusedAtEndOfHeaders(text)
            if text.starts_with("550 5.7.1 no X-MS.com-server header")),
        "without SMFIP_NR_EOH the refusal answers the end of the headers: {answered:?}"
    );
    mta.abort();
    let mut relay = Mta::open_offering(&server, RELAY, old_style).await;
    assert_accepted(&relay.message(BOTH).await);
    let counts = server.counts();
    assert_eq!((counts.accepted, counts.missing), (1, 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_without_the_hold_queue_gets_a_tempfail_for_quarantine() {
    let server = Server::start(16, MilterAction::Quarantine);
    let options = OptNeg {
        protocol: Protocol::all(),
        capabilities: Capability::all() - Capability::SMFIF_QUARANTINE,
        ..OptNeg::default()
    };
    let mut mta = Mta::open_negotiating(&server, DIRECT, options).await;
    assert_refused(
        &mta.message(&[]).await,
        "451 4.7.1 no X-MS.com-server header",
    );
    // An MTA that grants it gets the quarantine.
    let mut full = Mta::open(&server, DIRECT).await;
    let answered = full.message(&[]).await;
    assert!(
        matches!(&answered, Answered::Accepted(mods)
            if matches!(mods.as_slice(), [ModificationAction::Quarantine(_)])),
        "{answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_resets_the_message_and_a_connection_carries_several() {
    let server = Server::start(16, MilterAction::Reject);
    let mut mta = Mta::open(&server, RELAY).await;
    assert_accepted(&mta.message(BOTH).await);
    // Half a message, then RSET: its header must not count for the next one.
    mta.start_message(&[("X-MS.com-server", "mx1")]).await;
    mta.abort();
    let answered = mta.message(&[("X-MS.com-version", "7")]).await;
    assert_refused(&answered, "550 5.7.1 no X-MS.com-server header");
    mta.abort();
    // Folded values and odd case are still the headers (D2).
    assert_accepted(
        &mta.message(&[("x-ms.com-SERVER", "\r\n\tmx1"), ("X-MS.COM-VERSION", "7")])
            .await,
    );
    // No abort between two accepted messages (the end of the message resets too).
    assert_accepted(&mta.message(BOTH).await);
    let counts = server.counts();
    assert_eq!((counts.accepted, counts.missing), (3, 1), "{counts:?}");
    assert_eq!(counts.connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_replaces_a_senders_verdict_header() {
    let server = Server::start(16, MilterAction::Tag);
    let mut mta = Mta::open(&server, DIRECT).await;
    let answered = mta
        .message(&[("X-Mxguard-Verdict", "accepted"), ("Subject", "hi")])
        .await;
    let Answered::Accepted(modifications) = answered else {
        panic!("tag accepts: {answered:?}");
    };
    let described: Vec<String> = modifications
        .iter()
        .map(|m| match m {
            ModificationAction::ChangeHeader(c) => {
                format!("change {} {}={:?}", c.index(), c.name(), c.value())
            }
            ModificationAction::AddHeader(a) => format!("add {}={:?}", a.name(), a.value()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        described,
        [
            "change 1 X-Mxguard-Verdict=\"\"",
            "add X-Mxguard-Verdict=\"missing\""
        ]
    );
}

/// Reads until the server closes the connection; panics if it stays open for 5 s.
fn assert_closed_by_server(mut stream: std::net::TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("{what}: the milter did not close the connection: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_packets_and_vanished_peers_end_only_their_connection() {
    let server = Server::start(16, MilterAction::Reject);
    let mut good = Mta::open(&server, RELAY).await;
    let inputs: [(&str, &[u8]); 3] = [
        // "GET " is a length of 1.2 GB: refused before anything is buffered.
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("an oversized packet", &[0x00, 0x10, 0x00, 0x00, b'H', b'x']),
        ("an unknown command", &[0, 0, 0, 3, b'Z', b'z', b'z']),
    ];
    for (what, bytes) in inputs {
        let mut stream = std::net::TcpStream::connect(server.addr).expect("connect");
        stream.write_all(bytes).expect("garbage");
        assert_closed_by_server(stream, what);
    }
    // A peer that goes away in the middle of a message.
    let mut vanishing = Mta::open(&server, DIRECT).await;
    vanishing.start_message(&[("X-MS.com-server", "mx1")]).await;
    drop(vanishing);
    // A packet cut short, then gone.
    let mut cut = std::net::TcpStream::connect(server.addr).expect("connect");
    cut.write_all(&[0, 0, 0, 50, b'O', 0, 0])
        .expect("half a packet");
    drop(cut);

    // The connection opened before all that still works, and so does a new one.
    assert_accepted(&good.message(BOTH).await);
    let mut fresh = Mta::open(&server, RELAY).await;
    assert_accepted(&fresh.message(BOTH).await);
    let counts = server.counts();
    assert!(counts.connection_errors >= 3, "{counts:?}");
    assert_eq!(counts.accepted, 2, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_connections_each_get_their_own_verdicts() {
    const CONNECTIONS: usize = 300;
    let server = std::sync::Arc::new(Server::start(512, MilterAction::Reject));
    let mut tasks = Vec::new();
    for n in 0..CONNECTIONS {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let client = if n % 2 == 0 { RELAY } else { DIRECT };
            let mut mta = Mta::open(&server, client).await;
            let first = mta.message(BOTH).await;
            mta.abort();
            let second = mta.message(&[]).await;
            (client, first, second)
        }));
    }
    for task in tasks {
        let (client, first, second) = task.await.expect("a client task");
        if client == RELAY {
            assert_accepted(&first);
        } else {
            assert_refused(&first, "550 5.7.1 the filtering service's headers");
        }
        assert_refused(&second, "550 5.7.1 no X-MS.com-server header");
    }
    let counts = server.counts();
    assert_eq!(counts.connections, CONNECTIONS as u64, "{counts:?}");
    assert_eq!(counts.accepted, CONNECTIONS as u64 / 2, "{counts:?}");
    assert_eq!(counts.forged, CONNECTIONS as u64 / 2, "{counts:?}");
    assert_eq!(counts.missing, CONNECTIONS as u64, "{counts:?}");
    assert_eq!(counts.connection_errors, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_frees_its_slot() {
    let server = Server::start_idle(1, MilterAction::Reject, Duration::from_secs(1));
    // Negotiated and connected, then silent: a peer that stopped talking.
    let silent = Mta::open(&server, RELAY).await;
    let raw = silent
        .raw
        .try_clone()
        .expect("a handle on the silent connection");
    // The handle shares tokio's non-blocking mode; nothing else reads this socket any more.
    raw.set_nonblocking(false).expect("a blocking handle");
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || assert_closed_by_server(raw, "an idle connection"))
        .await
        .expect("the reader");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after the idle timeout, not at once: {:?}",
        started.elapsed()
    );
    // The socket closes a moment before the connection's task counts its end.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while server.counts().connection_errors != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle close is counted as a connection error: {:?}",
            server.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(silent);
    // The only slot is free again: a new connection is served.
    let mut fresh = Mta::open(&server, RELAY).await;
    assert_accepted(&fresh.message(BOTH).await);
    assert_eq!(
        server.counts().connections_refused,
        0,
        "{:?}",
        server.counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_are_closed_at_once() {
    let server = Server::start(3, MilterAction::Reject);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Mta::open(&server, RELAY).await);
    }
    let extra = std::net::TcpStream::connect(server.addr).expect("connect");
    assert_closed_by_server(extra, "a connection beyond the bound");
    assert_eq!(server.counts().connections_refused, 1);
    // One ends: a slot is free again.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stream = std::net::TcpStream::connect(server.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        // Served connections wait for the MTA's option negotiation: a read times out.
        if matches!((&stream).read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slot came free: {:?}",
            server.counts()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_accepted(&open[0].message(BOTH).await);
}
