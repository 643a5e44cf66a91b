//! mxguard's XDP program: drop TCP SYNs to protected ports unless the source is allowlisted.
//!
//! The rule is written down, case by case, in `docs/verdict-rule.md`; `judge` implements it and
//! the userspace reference classifier implements it again, independently. Every frame runs
//! straight through: parse and judge it, apply the action to a denial, count it. Nothing here
//! logs per packet: every frame bumps one per-CPU counter row.
#![no_std]
#![no_main]

mod allowlist;
mod checksum;
mod count;
mod judge;
mod maps;
mod parse;
mod rate_limit;
mod reject;
mod sample;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use filter_common::{Action, RATE_SLOT_REJECT};

use crate::{
    count::Row,
    judge::{Judgement, Outcome},
    maps::CONFIG,
    parse::Frame,
    rate_limit::within_rate,
};

/// What happens to a frame.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Monitor action: passed, counted as a would-be drop.
    WouldDrop,
    /// Answered with a RST through XDP_TX.
    Rejected,
}

#[xdp]
pub fn mxguard(ctx: XdpContext) -> u32 {
    let mut frame = Frame::new(&ctx);
    let judgement = judge::classify(&frame);
    let row = Row::of(judgement.family);
    let verdict = if judgement.outcome.is_denied() {
        deny(&ctx, &mut frame, &judgement, row)
    } else {
        Verdict::Pass
    };
    row.count(judgement.outcome, verdict);
    match verdict {
        Verdict::Pass | Verdict::WouldDrop => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Rejected => xdp_action::XDP_TX,
    }
}

/// Applies the configured action to a denied frame. The config is read only here, so passing
/// frames never pay for it.
#[inline(always)]
fn deny(ctx: &XdpContext, frame: &mut Frame, judgement: &Judgement, row: Row) -> Verdict {
    // Before the action: `reject` rewrites the headers the sample reads.
    sample::sample(frame, judgement, row);
    if cfg!(feature = "off-action") {
        return Verdict::Drop;
    }
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Drop;
    };
    match Action::from_raw(config.action) {
        Action::Drop => Verdict::Drop,
        Action::Monitor => Verdict::WouldDrop,
        Action::Reject => match judgement.outcome {
            // Evasive fragments get no answer: there is no whole TCP header to answer.
            Outcome::SynDenied { tcp }
                if within_rate(RATE_SLOT_REJECT, config.reject_per_cpu_per_sec)
                    && reject::answer_with_rst(ctx, frame, judgement.family, judgement.ip, tcp) =>
            {
                Verdict::Rejected
            }
            _ => Verdict::Drop,
        },
    }
}

filter_common::bpf_object!();
