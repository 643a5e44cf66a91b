//! The milter's decision, as a pure function of the session, the message's headers, the
//! policy and an allowlist snapshot: docs/milter.md's table, row by row (its "Decisions" log
//! is cited as D1..Dn). The protocol glue (`session`) only gathers these facts.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    str::FromStr,
};

use anyhow::bail;

use crate::cidr::{Cidr, v4_mask, v6_mask};

/// A header field name, matched case-insensitively (D2).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderName(String);

impl HeaderName {
    /// The name as configured (for messages and replies).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, name: &str) -> bool {
        self.0.eq_ignore_ascii_case(name.trim())
    }
}

impl FromStr for HeaderName {
    type Err = anyhow::Error;
    /// RFC 5322 field names: printable ASCII except the colon, at least one character.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let name = text.trim();
        if name.is_empty() {
            bail!("empty header name");
        }
        if let Some(bad) = name.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
            bail!("header name {text:?} contains {bad:?}: use printable ASCII without a colon");
        }
        Ok(HeaderName(name.to_owned()))
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the milter checks, from the configuration (reloadable).
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// Every one of them must be present (D1).
    pub required: Vec<HeaderName>,
    /// Clients exempt from the check (D4).
    pub exempt: Vec<Cidr>,
}

/// Facts about the SMTP session, from Postfix's connect packet and macros.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Session {
    /// The SMTP client's address; `None` when Postfix sent none (unknown family, a unix
    /// socket): never exempt by CIDR, never allowlisted (D7).
    pub client: Option<IpAddr>,
    /// `{auth_authen}` was set and not empty: an SMTP-AUTH user (D3).
    pub authenticated: bool,
}

/// How often each required header appeared in one message, and whether with a value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderTally {
    /// Per required header (same order as [`Rules::required`]): occurrences with a
    /// non-empty unfolded value.
    counts: Vec<u32>,
}

impl HeaderTally {
    pub fn new(rules: &Rules) -> Self {
        HeaderTally {
            counts: vec![0; rules.required.len()],
        }
    }

    /// Counts one header of the message if it is a required one.
    pub fn observe(&mut self, rules: &Rules, name: &str, value: &str) {
        // An empty value carries nothing the filtering service would have written (D2).
        if unfold(value).is_empty() {
            return;
        }
        for (required, count) in rules.required.iter().zip(&mut self.counts) {
            if required.matches(name) {
                *count = count.saturating_add(1);
            }
        }
    }

    /// The tally of a whole header list (for tests and tools).
    pub fn of(rules: &Rules, headers: &[(&str, &str)]) -> Self {
        let mut tally = HeaderTally::new(rules);
        for (name, value) in headers {
            tally.observe(rules, name, value);
        }
        tally
    }
}

/// A header value with its folding undone (CRLF or LF followed by white space becomes that
/// white space, RFC 5322 3.2.2) and surrounding white space trimmed.
pub fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {}
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

/// The allowlist as the milter sees it: the same union of sources the daemon writes to the
/// BPF maps, as a lookup structure built once per change (cheap to share, never blocks).
#[derive(Clone, Debug, Default)]
pub struct AllowSnapshot {
    /// Prefix length -> masked network addresses of that length.
    v4: BTreeMap<u8, HashSet<u32>>,
    v6: BTreeMap<u8, HashSet<u128>>,
    entries: usize,
}

impl AllowSnapshot {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a Cidr>) -> Self {
        let mut snapshot = AllowSnapshot::default();
        for cidr in prefixes {
            snapshot.entries += 1;
            match (cidr.addr(), cidr.prefix_len()) {
                (IpAddr::V4(addr), len) => {
                    snapshot.v4.entry(len).or_default().insert(addr.to_bits());
                }
                (IpAddr::V6(addr), len) => {
                    snapshot.v6.entry(len).or_default().insert(addr.to_bits());
                }
            }
        }
        snapshot
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether `ip` is inside any prefix (IPv4-mapped IPv6 addresses count as IPv4, as in
    /// the XDP program).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                self.contains(IpAddr::V4(v6.to_ipv4_mapped().expect("checked")))
            }
            IpAddr::V4(ip) => self
                .v4
                .iter()
                .any(|(len, set)| set.contains(&(ip.to_bits() & v4_mask(*len)))),
            IpAddr::V6(ip) => self
                .v6
                .iter()
                .any(|(len, set)| set.contains(&(ip.to_bits() & v6_mask(*len)))),
        }
    }
}

/// Why a session is exempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exemption {
    Authenticated,
    ExemptClient,
}

/// The verdict on one message (one row of the table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Row 1-2: not checked.
    Exempt(Exemption),
    /// Row 3: a required header is absent (the first one missing is named).
    Missing(HeaderName),
    /// Rows 4-5: the headers are there but the client is no relay of the service; `repeated`
    /// names a required header such a client sent more than once (row 5).
    Forged { repeated: Option<HeaderName> },
    /// Row 6: every required header, from an allowlisted client.
    Accepted,
}

impl Verdict {
    /// The counter and log name: `exempt`, `missing`, `forged` or `accepted`.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Exempt(_) => "exempt",
            Verdict::Missing(_) => "missing",
            Verdict::Forged { .. } => "forged",
            Verdict::Accepted => "accepted",
        }
    }
}

/// The decision table (docs/milter.md), top row first: the first row that matches decides.
pub fn decide(
    rules: &Rules,
    session: &Session,
    tally: &HeaderTally,
    allowlist: &AllowSnapshot,
) -> Verdict {
    // D3: authenticated users are who this lock-down would break; they never came through
    // the filtering service.
    if session.authenticated {
        return Verdict::Exempt(Exemption::Authenticated);
    }
    // D4: local submissions (Postfix reports them as 127.0.0.1) and configured clients.
    if let Some(client) = session.client
        && rules.exempt.iter().any(|cidr| cidr.contains(client))
    {
        return Verdict::Exempt(Exemption::ExemptClient);
    }
    // D5: a missing header outranks a forged one: it is the plainer reason to give.
    let counts = tally.counts.iter().chain(std::iter::repeat(&0));
    let mut repeated = None;
    for (header, count) in rules.required.iter().zip(counts) {
        if *count == 0 {
            return Verdict::Missing(header.clone());
        }
        if *count > 1 && repeated.is_none() {
            repeated = Some(header.clone());
        }
    }
    let relay = session.client.is_some_and(|ip| allowlist.contains(ip));
    if relay {
        // D6: the service's relay may add a header twice (e.g. after a second pass).
        return Verdict::Accepted;
    }
    Verdict::Forged { repeated }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            required: vec![
                "X-MS.com-server".parse().unwrap(),
                "X-MS.com-version".parse().unwrap(),
            ],
            exempt: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        }
    }

    fn allowlist() -> AllowSnapshot {
        let prefixes: Vec<Cidr> = ["192.0.2.10", "198.51.100.0/24", "2001:db8::10"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        AllowSnapshot::new(&prefixes)
    }

    fn session(client: &str, authenticated: bool) -> Session {
        Session {
            client: client.parse().ok(),
            authenticated,
        }
    }

    const BOTH: &[(&str, &str)] = &[("X-MS.com-server", "mx1"), ("X-MS.com-version", "7")];
    const SERVER_ONLY: &[(&str, &str)] = &[("X-MS.com-server", "mx1")];
    const LOWER_FOLDED: &[(&str, &str)] = &[
        ("x-ms.COM-server", "\r\n mx1"),
        ("X-MS.COM-VERSION", " 7\r\n\t(build 3)"),
    ];
    const TWICE: &[(&str, &str)] = &[
        ("X-MS.com-server", "mx1"),
        ("X-MS.com-server", "mx2"),
        ("X-MS.com-version", "7"),
    ];
    const EMPTY_VALUE: &[(&str, &str)] =
        &[("X-MS.com-server", " \r\n "), ("X-MS.com-version", "7")];

    fn header(name: &str) -> HeaderName {
        name.parse().unwrap()
    }

    /// Client, authenticated, headers, expected verdict.
    type Row = (
        &'static str,
        bool,
        &'static [(&'static str, &'static str)],
        Verdict,
    );

    /// Every row of docs/milter.md's table, with the inputs that pick it.
    #[test]
    fn decision_table() {
        let missing = |h: &str| Verdict::Missing(header(h));
        let forged = |h: Option<&str>| Verdict::Forged {
            repeated: h.map(header),
        };
        let rows: &[Row] = &[
            // 1: authenticated, whatever the headers and the client (D3).
            (
                "203.0.113.9",
                true,
                &[],
                Verdict::Exempt(Exemption::Authenticated),
            ),
            (
                "203.0.113.9",
                true,
                TWICE,
                Verdict::Exempt(Exemption::Authenticated),
            ),
            // 2: an exempt client (D4), IPv4 and IPv6.
            (
                "127.0.0.1",
                false,
                &[],
                Verdict::Exempt(Exemption::ExemptClient),
            ),
            (
                "::1",
                false,
                SERVER_ONLY,
                Verdict::Exempt(Exemption::ExemptClient),
            ),
            // 3: a required header missing, from a relay or not (D5).
            ("203.0.113.9", false, &[], missing("X-MS.com-server")),
            (
                "203.0.113.9",
                false,
                SERVER_ONLY,
                missing("X-MS.com-version"),
            ),
            (
                "192.0.2.10",
                false,
                SERVER_ONLY,
                missing("X-MS.com-version"),
            ),
            ("192.0.2.10", false, EMPTY_VALUE, missing("X-MS.com-server")),
            (
                "203.0.113.9",
                false,
                &[("X-MS.com-server", "mx1"), ("X-MS.com-server", "mx2")],
                missing("X-MS.com-version"),
            ),
            // 4: present, but not from a relay.
            ("203.0.113.9", false, BOTH, forged(None)),
            ("2001:db8::66", false, LOWER_FOLDED, forged(None)),
            // 5: repeated, not from a relay.
            ("203.0.113.9", false, TWICE, forged(Some("X-MS.com-server"))),
            // 6: accepted, including repeated and case/folding variants from a relay (D2, D6).
            ("192.0.2.10", false, BOTH, Verdict::Accepted),
            ("198.51.100.77", false, LOWER_FOLDED, Verdict::Accepted),
            ("2001:db8::10", false, TWICE, Verdict::Accepted),
            ("::ffff:192.0.2.10", false, BOTH, Verdict::Accepted),
        ];
        for (client, authenticated, headers, expected) in rows {
            let tally = HeaderTally::of(&rules(), headers);
            let got = decide(
                &rules(),
                &session(client, *authenticated),
                &tally,
                &allowlist(),
            );
            assert_eq!(
                &got, expected,
                "client {client} auth {authenticated} headers {headers:?}"
            );
        }
    }

    #[test]
    fn no_client_address_is_neither_exempt_nor_a_relay() {
        let tally = HeaderTally::of(&rules(), BOTH);
        let unknown = Session::default();
        assert_eq!(
            decide(&rules(), &unknown, &tally, &allowlist()),
            Verdict::Forged { repeated: None }
        );
    }

    #[test]
    fn no_exempt_prefixes_checks_loopback_too() {
        let rules = Rules {
            exempt: Vec::new(),
            ..rules()
        };
        let tally = HeaderTally::of(&rules, &[]);
        assert_eq!(
            decide(&rules, &session("127.0.0.1", false), &tally, &allowlist()),
            Verdict::Missing(header("X-MS.com-server"))
        );
    }

    #[test]
    fn unfolding() {
        assert_eq!(unfold(" a\r\n\tb\r\n c "), "a\tb c");
        assert_eq!(unfold("\r\n "), "");
        assert_eq!(unfold("x\ny"), "xy");
    }

    #[test]
    fn header_names_are_checked() {
        assert!("X-MS.com-server".parse::<HeaderName>().is_ok());
        assert!("".parse::<HeaderName>().is_err());
        assert!("X-Bad: name".parse::<HeaderName>().is_err());
        assert!("X Bad".parse::<HeaderName>().is_err());
    }

    #[test]
    fn snapshot_lookups() {
        let snapshot = allowlist();
        assert_eq!(snapshot.len(), 3);
        assert!(snapshot.contains("198.51.100.255".parse().unwrap()));
        assert!(!snapshot.contains("198.51.101.0".parse().unwrap()));
        assert!(!snapshot.contains("2001:db8::11".parse().unwrap()));
        assert!(!AllowSnapshot::default().contains("192.0.2.10".parse().unwrap()));
        let all: Vec<Cidr> = vec!["0.0.0.0/0".parse().unwrap()];
        assert!(AllowSnapshot::new(&all).contains("203.0.113.1".parse().unwrap()));
    }
}
