//! One milter connection (one SMTP session with Postfix): the protocol callbacks gather the
//! facts the decision needs and answer with its outcome. State per message is reset at the
//! start of every transaction, on abort and after the end of each message.

use std::{net::IpAddr, sync::Arc};

use async_trait::async_trait;
use miltr_common::{
    ProtocolError,
    actions::{Action, Continue, Discard, Replycode},
    commands::{Connect, Family, Header, Macro, Mail},
    modifications::{
        ModificationResponse,
        headers::{AddHeader, ChangeHeader},
        quarantine::Quarantine,
    },
    optneg::{Capability, OptNeg, Protocol},
};
use miltr_server::Milter;
use tokio::sync::watch;

use super::{
    AllowSnapshot, MilterAction, Policy, Verdict,
    decision::{self, HeaderTally, Session},
    outcome::{self, Answer, Granted, VERDICT_HEADER},
    stats::MilterStats,
};

/// What every connection reads: the live policy and allowlist (each a cheap `Arc` snapshot,
/// replaced as a whole by the daemon, never waited for: D10) and the shared counters.
#[derive(Clone, Debug)]
pub struct Shared {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub allowlist: watch::Receiver<Arc<AllowSnapshot>>,
    pub stats: Arc<MilterStats>,
}

/// The per-connection milter.
#[derive(Debug)]
pub struct MilterSession {
    shared: Shared,
    /// What the MTA granted at option negotiation (all until it negotiates).
    granted: Granted,
    session: Session,
    /// The client as Postfix named it, for the log.
    peer: String,
    message: Message,
}

/// One message's state.
#[derive(Debug, Default)]
struct Message {
    /// Set by the MAIL stage's macros, which arrive before the MAIL command itself.
    reset_by_macros: bool,
    /// The policy this message is judged by (taken when it starts: a reload in the middle
    /// of a message applies from the next one).
    policy: Option<Arc<Policy>>,
    tally: HeaderTally,
    /// Headers named [`VERDICT_HEADER`] the sender wrote (removed before tagging).
    verdict_headers: u32,
    queue_id: Option<String>,
    authenticated: bool,
    /// Decided at the end of the headers; answered there or at the end of the message.
    decided: Option<Answer>,
}

impl MilterSession {
    pub fn new(shared: Shared) -> Self {
        MilterSession {
            shared,
            granted: Granted::ALL,
            session: Session::default(),
            peer: "unknown".to_owned(),
            message: Message::default(),
        }
    }

    /// The message's policy, taken from the live one if the message has none yet.
    fn policy(&mut self) -> Arc<Policy> {
        let live = &self.shared.policy;
        let message = &mut self.message;
        message
            .policy
            .get_or_insert_with(|| {
                let policy = live.borrow().clone();
                message.tally = HeaderTally::new(&policy.rules);
                policy
            })
            .clone()
    }

    /// The MAIL command: a new message, unless the MAIL stage's macros (sent just before it)
    /// already opened one.
    fn begin_message(&mut self) {
        if !self.message.reset_by_macros {
            self.end_message();
        }
        self.message.reset_by_macros = false;
        self.policy();
    }

    /// Decides once per message (at the end of the headers, or at the end of the message if
    /// the MTA sent no end-of-headers), counting and logging the verdict.
    fn decide(&mut self) -> Answer {
        if let Some(answer) = &self.message.decided {
            return answer.clone();
        }
        let policy = self.policy();
        let allowlist = self.shared.allowlist.borrow().clone();
        let session = Session {
            authenticated: self.message.authenticated || self.session.authenticated,
            ..self.session.clone()
        };
        let verdict = decision::decide(&policy.rules, &session, &self.message.tally, &allowlist);
        self.shared.stats.count_verdict(&verdict);
        let wanted = if allowlist.is_empty() {
            outcome::answer_before_relays_known(&policy, &verdict)
        } else {
            outcome::answer(&policy, &verdict)
        };
        let answer = outcome::within(self.granted, wanted.clone(), &verdict);
        if answer != wanted {
            tracing::warn!(
                client = %self.peer,
                configured = wanted.action().map_or("accept", MilterAction::name),
                instead = answer.action().map_or("accept", MilterAction::name),
                "milter: the MTA did not grant what the configured action needs (SMFIF_QUARANTINE, SMFIF_ADDHDRS/CHGHDRS)"
            );
        }
        self.log(&verdict, &answer);
        self.message.decided = Some(answer.clone());
        answer
    }

    fn log(&self, verdict: &Verdict, answer: &Answer) {
        let queue_id = self.message.queue_id.as_deref().unwrap_or("NOQUEUE");
        let header = match verdict {
            Verdict::Missing(header) => header.as_str(),
            Verdict::Forged {
                repeated: Some(header),
            } => header.as_str(),
            _ => "",
        };
        let reason = outcome::reason(verdict).unwrap_or_default();
        match answer.action() {
            // The mail is refused, held or lost: always worth a line (once per message).
            Some(
                action @ (MilterAction::Reject
                | MilterAction::Tempfail
                | MilterAction::Quarantine
                | MilterAction::Discard),
            ) => tracing::warn!(
                queue_id,
                client = %self.peer,
                verdict = verdict.name(),
                action = action.name(),
                header,
                "milter: {reason}"
            ),
            Some(action) => tracing::info!(
                queue_id,
                client = %self.peer,
                verdict = verdict.name(),
                action = action.name(),
                header,
                "milter: {reason}"
            ),
            None => tracing::debug!(
                queue_id,
                client = %self.peer,
                verdict = verdict.name(),
                "milter: passed"
            ),
        }
    }

    fn end_message(&mut self) {
        // AUTH cannot be undone within an SMTP session: it outlives the transaction.
        self.session.authenticated |= self.message.authenticated;
        self.message = Message::default();
    }
}

/// The client address of a connect packet (`None` for unix sockets and unknown clients).
fn client_address(connect: &Connect) -> Option<IpAddr> {
    if !matches!(connect.family, Family::Inet | Family::Inet6) {
        return None;
    }
    let text = connect.address();
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    // Sendmail writes IPv6 clients as "IPv6:ADDR".
    let text = text
        .get(..5)
        .filter(|prefix| prefix.eq_ignore_ascii_case("IPv6:"))
        .map_or(text, |_| &text[5..]);
    text.parse().ok()
}

/// The steps answered only by the end of the message when the MTA agrees (`SMFIP_NR_*`): a
/// refusal decided at the end of the headers is then sent at the end of the message.
const NO_REPLY: Protocol = Protocol::NR_CONNECT
    .union(Protocol::NR_MAIL)
    .union(Protocol::NR_HEADER)
    .union(Protocol::NR_END_OF_HEADER);

fn refusal(answer: &Answer) -> Option<Action> {
    match answer {
        Answer::Refuse {
            smtp,
            enhanced,
            text,
        } => Some(Replycode::new(*smtp, *enhanced, text).into()),
        Answer::Discard => Some(Discard.into()),
        _ => None,
    }
}

#[async_trait]
impl Milter for MilterSession {
    type Error = std::convert::Infallible;

    /// Asks Postfix for only what the decision needs: no HELO, RCPT, DATA, body or unknown
    /// commands, so the milter's cost does not grow with the mail; and, where the MTA offers
    /// it, no answer to the connect, MAIL, header and end-of-headers steps (the end of the
    /// message carries the verdict), so a message costs Postfix one round trip (D11). The macros `i` and
    /// `{auth_authen}` come from Postfix's default milter_*_macros lists (docs/operations.md
    /// says to keep them); requesting them here would replace those lists, and clients such
    /// as miltr-client cannot read an answer that carries macro requests.
    async fn option_negotiation(
        &mut self,
        theirs: OptNeg,
    ) -> Result<OptNeg, miltr_server::Error<Self::Error>> {
        let ours = OptNeg {
            capabilities: Capability::SMFIF_ADDHDRS
                | Capability::SMFIF_CHGHDRS
                | Capability::SMFIF_QUARANTINE,
            protocol: Protocol::NO_HELO
                | Protocol::NO_RECIPIENT
                | Protocol::NO_DATA
                | Protocol::NO_BODY
                | Protocol::NO_UNKNOWN
                | (NO_REPLY & theirs.protocol),
            ..OptNeg::default()
        };
        let merged = ours
            .merge_compatible(&theirs)
            .map_err(ProtocolError::CompatibilityError)?;
        self.granted = Granted {
            quarantine: merged.capabilities.contains(Capability::SMFIF_QUARANTINE),
            headers: merged
                .capabilities
                .contains(Capability::SMFIF_ADDHDRS | Capability::SMFIF_CHGHDRS),
        };
        Ok(merged)
    }

    async fn macro_(&mut self, macros: Macro) -> Result<(), Self::Error> {
        // The MAIL stage's macros open a new transaction.
        if macros.code == b'M' {
            self.end_message();
            self.message.reset_by_macros = true;
        }
        for (name, value) in macros.macros() {
            let name = String::from_utf8_lossy(name);
            let value = String::from_utf8_lossy(value);
            match name.trim_start_matches('{').trim_end_matches('}') {
                "i" if !value.is_empty() => self.message.queue_id = Some(value.into_owned()),
                "auth_authen" if !value.is_empty() => self.message.authenticated = true,
                _ => {}
            }
        }
        Ok(())
    }

    async fn connect(&mut self, connect: Connect) -> Result<Action, Self::Error> {
        self.session = Session {
            client: client_address(&connect),
            authenticated: false,
        };
        self.peer = match self.session.client {
            Some(ip) => ip.to_string(),
            None => format!("{} (no address)", connect.hostname()),
        };
        self.message = Message::default();
        Ok(Continue.into())
    }

    async fn mail(&mut self, _mail: Mail) -> Result<Action, Self::Error> {
        self.begin_message();
        Ok(Continue.into())
    }

    async fn header(&mut self, header: Header) -> Result<Action, Self::Error> {
        let policy = self.policy();
        let (name, value) = (header.name(), header.value());
        self.message.tally.observe(&policy.rules, &name, &value);
        if name.trim().eq_ignore_ascii_case(VERDICT_HEADER) {
            self.message.verdict_headers = self.message.verdict_headers.saturating_add(1);
        }
        Ok(Continue.into())
    }

    async fn end_of_header(&mut self) -> Result<Action, Self::Error> {
        let answer = self.decide();
        Ok(refusal(&answer).unwrap_or_else(|| Continue.into()))
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Self::Error> {
        let answer = self.decide();
        let verdict_headers = self.message.verdict_headers;
        self.end_message();
        if let Some(refusal) = refusal(&answer) {
            return Ok(ModificationResponse::builder().build(refusal));
        }
        let mut response = ModificationResponse::builder();
        match answer {
            Answer::Quarantine(reason) => response.push(Quarantine::new(reason.as_bytes())),
            Answer::Tag(value) => {
                // Only our tag may stand: a sender's own X-Mxguard-Verdict goes (last first,
                // so the indexes stay valid).
                for index in (1..=verdict_headers).rev() {
                    response.push(ChangeHeader::new(index, VERDICT_HEADER.as_bytes(), b""));
                }
                response.push(AddHeader::new(VERDICT_HEADER.as_bytes(), value.as_bytes()));
            }
            _ => {}
        }
        Ok(response.contin())
    }

    async fn abort(&mut self) -> Result<(), Self::Error> {
        self.end_message();
        Ok(())
    }
}
