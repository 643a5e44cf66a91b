//! systemd's readiness protocol (`Type=notify`): READY=1 with a STATUS= line once the filter
//! is attached with its allowlist in place, WATCHDOG=1 from the main loop, RELOADING=1 then
//! READY=1 around a SIGHUP reload, STOPPING=1 on the way out. Without `$NOTIFY_SOCKET` (not
//! started by systemd) every call does nothing.

use std::time::Duration;

use filter_common::Action;

use crate::cli::RunPlan;

pub struct Notifier {
    /// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, so one late tick is not fatal.
    watchdog: Option<Duration>,
    /// The last STATUS= sent, so unchanged lines are not repeated.
    status: String,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout / 2);
        if let Some(every) = watchdog {
            tracing::info!(every = ?every, "systemd watchdog enabled");
        }
        Notifier {
            watchdog,
            status: String::new(),
        }
    }

    /// READY=1: every interface is attached and the allowlist filled, or the start-up
    /// monitor state (empty allowlist, waiting for DNS) is in force; `status` says which.
    pub fn ready(&mut self, status: String) {
        send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        self.status = status;
    }

    /// A new STATUS= line, when it differs from the last one.
    pub fn status(&mut self, status: String) {
        if status != self.status {
            send(&[sd_notify::NotifyState::Status(&status)]);
            self.status = status;
        }
    }

    /// RELOADING=1 with the monotonic timestamp `Type=notify-reload` managers want; READY=1
    /// follows once the reload is applied or rejected.
    pub fn reloading(&mut self) {
        let mut states = vec![
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::Status("reloading the configuration"),
        ];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        send(&states);
        self.status.clear();
    }

    pub fn stopping(&mut self) {
        send(&[sd_notify::NotifyState::Stopping]);
    }

    pub fn watchdog(&self) {
        send(&[sd_notify::NotifyState::Watchdog]);
    }

    /// The main loop's watchdog tick, when systemd asked for one.
    pub fn watchdog_ticker(&self) -> Option<tokio::time::Interval> {
        self.watchdog.map(|every| {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        })
    }
}

fn send(states: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!("notifying systemd failed: {error}");
    }
}

/// The STATUS= line: what is protected, and whether it is enforced or only monitored.
pub fn status_line(plan: &RunPlan, in_force: Action, allowlist_entries: usize) -> String {
    let ifaces = plan.options.iface.join(", ");
    let ports: Vec<String> = plan.ports.iter().map(u16::to_string).collect();
    let ports = ports.join(",");
    if in_force != plan.action {
        format!(
            "monitoring {ifaces} (port {ports}): allowlist empty, waiting for DNS; would-be \
             drops are only counted until it holds an address"
        )
    } else {
        let note = if in_force == Action::Monitor {
            " (nothing is dropped)"
        } else {
            ""
        };
        format!(
            "protecting {ifaces} (port {ports}): {allowlist_entries} allowlist entries, \
             action {}{note}",
            in_force.name()
        )
    }
}
