//! From a verdict and the configured action to the answer the MTA gets (docs/milter.md,
//! "Actions").

use super::{MilterAction, Policy, Verdict};

/// The header `tag` adds.
pub const VERDICT_HEADER: &str = "X-Mxguard-Verdict";

/// What the milter answers for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accepted, untouched.
    Continue,
    /// An SMTP reply refusing the message: 550 5.7.1 (reject) or 451 4.7.1 (tempfail).
    Refuse {
        smtp: [u8; 3],
        enhanced: [u16; 3],
        text: String,
    },
    /// Accepted and silently dropped.
    Discard,
    /// Accepted into the hold queue, with this reason.
    Quarantine(String),
    /// Accepted with [`VERDICT_HEADER`]`: VALUE` added.
    Tag(&'static str),
}

impl Answer {
    /// Whether the answer can be given at the end of the headers (saving the body's
    /// transfer). Quarantine and header changes are end-of-message actions in the protocol.
    pub fn at_end_of_headers(&self) -> bool {
        matches!(self, Answer::Refuse { .. } | Answer::Discard)
    }

    /// The action the log names (`None` for a plain accept).
    pub fn action(&self) -> Option<MilterAction> {
        match self {
            Answer::Continue => None,
            Answer::Refuse { smtp, .. } if smtp[0] == 4 => Some(MilterAction::Tempfail),
            Answer::Refuse { .. } => Some(MilterAction::Reject),
            Answer::Discard => Some(MilterAction::Discard),
            Answer::Quarantine(_) => Some(MilterAction::Quarantine),
            Answer::Tag(_) => Some(MilterAction::Tag),
        }
    }
}

/// Why a verdict refuses, in words for the SMTP reply and the log.
pub fn reason(verdict: &Verdict) -> Option<String> {
    match verdict {
        Verdict::Exempt(_) | Verdict::Accepted => None,
        Verdict::Missing(header) => Some(format!(
            "no {header} header: mail for this server must come through its filtering service"
        )),
        Verdict::Forged { repeated: None } => {
            Some("the filtering service's headers, but not from one of its relays".to_owned())
        }
        Verdict::Forged {
            repeated: Some(header),
        } => Some(format!(
            "header {header} more than once, and not from a relay of the filtering service"
        )),
    }
}

/// The answer for `verdict` under `policy`.
pub fn answer(policy: &Policy, verdict: &Verdict) -> Answer {
    match verdict {
        Verdict::Exempt(_) | Verdict::Accepted => Answer::Continue,
        Verdict::Missing(_) => answer_with(policy.on_missing, verdict),
        Verdict::Forged { .. } => answer_with(policy.on_forged, verdict),
    }
}

/// The answer while the allowlist is empty (no static prefix, no DNS answer and no saved state
/// yet): it cannot tell a relay from a direct sender, so a forged verdict is refused for now
/// (451) whatever `--milter-forged` says, and the relay retries once the allowlist is known
/// (docs/milter.md, D12).
pub fn answer_before_relays_known(policy: &Policy, verdict: &Verdict) -> Answer {
    match verdict {
        Verdict::Forged { .. } => answer_with(MilterAction::Tempfail, verdict),
        _ => answer(policy, verdict),
    }
}

/// What the MTA granted at option negotiation that some answers need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// SMFIF_QUARANTINE: the hold queue.
    pub quarantine: bool,
    /// SMFIF_ADDHDRS and SMFIF_CHGHDRS: the tag (and removing a sender's own).
    pub headers: bool,
}

impl Granted {
    pub const ALL: Granted = Granted {
        quarantine: true,
        headers: true,
    };
}

/// `answer` as the MTA can carry it out (docs/milter.md, D13): without the hold queue a
/// quarantine becomes a tempfail (the mail is neither delivered nor lost: the sender retries),
/// without header changes a tag becomes a plain accept (what tag lets through anyway).
pub fn within(granted: Granted, answer: Answer, verdict: &Verdict) -> Answer {
    match answer {
        Answer::Quarantine(_) if !granted.quarantine => {
            answer_with(MilterAction::Tempfail, verdict)
        }
        Answer::Tag(_) if !granted.headers => Answer::Continue,
        answer => answer,
    }
}

fn answer_with(action: MilterAction, verdict: &Verdict) -> Answer {
    let text = reason(verdict).unwrap_or_default();
    match action {
        MilterAction::Reject => Answer::Refuse {
            smtp: [5, 5, 0],
            enhanced: [5, 7, 1],
            text,
        },
        MilterAction::Tempfail => Answer::Refuse {
            smtp: [4, 5, 1],
            enhanced: [4, 7, 1],
            text,
        },
        MilterAction::Quarantine => Answer::Quarantine(format!("mxguard: {text}")),
        MilterAction::Discard => Answer::Discard,
        MilterAction::Tag => Answer::Tag(verdict.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::{Rules, decision::Exemption};

    fn policy(action: MilterAction) -> Policy {
        Policy {
            rules: Rules {
                required: vec!["X-MS.com-server".parse().unwrap()],
                exempt: Vec::new(),
            },
            on_missing: action,
            on_forged: action,
        }
    }

    #[test]
    fn answers_the_mta_cannot_carry_out_fall_back() {
        let missing = Verdict::Missing("X-MS.com-server".parse().unwrap());
        let quarantine = answer(&policy(MilterAction::Quarantine), &missing);
        let tag = answer(&policy(MilterAction::Tag), &missing);
        assert_eq!(
            within(Granted::ALL, quarantine.clone(), &missing),
            quarantine
        );
        assert_eq!(within(Granted::ALL, tag.clone(), &missing), tag);
        let none = Granted {
            quarantine: false,
            headers: false,
        };
        assert_eq!(
            within(none, quarantine, &missing).action(),
            Some(MilterAction::Tempfail),
            "no hold queue: the mail waits at the sender"
        );
        assert_eq!(within(none, tag, &missing), Answer::Continue);
        let reject = answer(&policy(MilterAction::Reject), &missing);
        assert_eq!(within(none, reject.clone(), &missing), reject);
    }

    #[test]
    fn every_action() {
        let missing = Verdict::Missing("X-MS.com-server".parse().unwrap());
        let forged = Verdict::Forged { repeated: None };
        let Answer::Refuse {
            smtp,
            enhanced,
            text,
        } = answer(&policy(MilterAction::Reject), &missing)
        else {
            panic!("reject refuses");
        };
        assert_eq!((smtp, enhanced), ([5, 5, 0], [5, 7, 1]));
        assert!(text.contains("no X-MS.com-server header"), "{text}");
        let tempfail = answer(&policy(MilterAction::Tempfail), &forged);
        assert_eq!(tempfail.action(), Some(MilterAction::Tempfail));
        assert!(matches!(
            tempfail,
            Answer::Refuse {
                smtp: [4, 5, 1],
                enhanced: [4, 7, 1],
                ..
            }
        ));
        assert!(tempfail.at_end_of_headers());
        let quarantine = answer(&policy(MilterAction::Quarantine), &forged);
        assert!(
            matches!(&quarantine, Answer::Quarantine(r) if r.contains("not from one of its relays"))
        );
        assert!(!quarantine.at_end_of_headers());
        assert_eq!(
            answer(&policy(MilterAction::Discard), &missing),
            Answer::Discard
        );
        assert_eq!(
            answer(&policy(MilterAction::Tag), &missing),
            Answer::Tag("missing")
        );
        assert_eq!(
            answer(&policy(MilterAction::Tag), &forged),
            Answer::Tag("forged")
        );
    }

    #[test]
    fn accepted_and_exempt_continue_whatever_the_actions() {
        for action in [
            MilterAction::Reject,
            MilterAction::Discard,
            MilterAction::Tag,
        ] {
            let policy = policy(action);
            assert_eq!(answer(&policy, &Verdict::Accepted), Answer::Continue);
            assert_eq!(
                answer(&policy, &Verdict::Exempt(Exemption::Authenticated)),
                Answer::Continue
            );
        }
    }

    #[test]
    fn forged_is_refused_for_now_while_no_relay_is_known() {
        let forged = Verdict::Forged { repeated: None };
        let missing = Verdict::Missing("X-MS.com-server".parse().unwrap());
        for action in [
            MilterAction::Reject,
            MilterAction::Discard,
            MilterAction::Tag,
        ] {
            let policy = policy(action);
            assert!(
                matches!(
                    answer_before_relays_known(&policy, &forged),
                    Answer::Refuse {
                        smtp: [4, 5, 1],
                        ..
                    }
                ),
                "with no relay known a forged verdict may be a relay: 451, never {action:?}"
            );
            // A missing header needs no allowlist: the configured action stands.
            assert_eq!(
                answer_before_relays_known(&policy, &missing),
                answer(&policy, &missing)
            );
        }
    }
}
