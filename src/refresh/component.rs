//! What the refresher of an Open Platform component's token does besides
//! what every refresher does: it mints the token with the newest usable
//! `component_verify_ticket` (pushed by WeChat to the callback receiver, or
//! written by another service), waits while there is none, asks WeChat to
//! push one when none came for `open_platform.start_push_ticket_after`,
//! and marks a ticket WeChat refused so that it is never used again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Input, Refresher};
use crate::coordination::{Permit, PermitRules};
use crate::metrics::Operation;
use crate::open_platform::store::{StoredTicket, Tickets};
use crate::subject::Component;
use crate::wechat::Api;

/// A component refresher's wait for a verify ticket.
#[derive(Debug, Clone, Copy)]
pub(super) struct TicketWait {
    /// Since when none was usable.
    since: Instant,
    /// When WeChat was last asked to push one.
    asked_at: Option<Instant>,
    /// Today's ceiling on asking was reported once.
    ceiling_reported: bool,
}

impl Refresher {
    /// The newest usable verify ticket, or how long to wait for one.
    pub(super) async fn verify_ticket(
        &mut self,
        component: &Arc<Component>,
    ) -> Result<Input, Duration> {
        let tickets = Tickets::new(self.ctx.store.clone());
        let read = tickets.newest_usable(component.appid.as_str(), self.now());
        match self.ctx.observe(Operation::ReadVerifyTicket, read).await {
            Ok(Some(ticket)) => {
                if self.ticket_wait.take().is_some() {
                    tracing::info!(
                        "a component_verify_ticket is stored: fetching the component token"
                    );
                }
                Ok(Input::VerifyTicket(ticket))
            }
            Ok(None) => Err(Box::pin(self.no_ticket(component)).await),
            Err(e) => Err(self.store_failed(&e, "cannot read the component_verify_ticket")),
        }
    }

    /// No usable ticket: wait for a push, and after
    /// `start_push_ticket_after` ask WeChat for one (again after as long).
    async fn no_ticket(&mut self, component: &Arc<Component>) -> Duration {
        let poll = self.ctx.refresh.request_poll_interval;
        let now = Instant::now();
        let wait = *self.ticket_wait.get_or_insert_with(|| {
            tracing::warn!(
                "waiting for a component_verify_ticket: none usable is stored (WeChat pushes one \
                 every 10 minutes to the callback URL; see the README, Open Platform)"
            );
            TicketWait {
                since: now,
                asked_at: None,
                ceiling_reported: false,
            }
        });
        if wait.since == now {
            // For `status`: the lease's last error says why no token comes.
            let note = self.lease.note_error(Some(
                "no usable component_verify_ticket: waiting for WeChat's push to the callback URL",
            ));
            if let Err(e) = self.ctx.observe(Operation::LeaseNote, note).await {
                tracing::debug!(error = %e, "cannot note the wait for a verify ticket");
            }
        }
        let Some(after) = component.start_push_ticket_after else {
            return poll;
        };
        if now.duration_since(wait.asked_at.unwrap_or(wait.since)) < after {
            return poll;
        }
        self.ticket_wait = Some(TicketWait {
            asked_at: Some(now),
            ..wait
        });
        self.start_push_ticket(component).await;
        poll
    }

    /// `api_start_push_ticket`, under a permit of its own API (its own
    /// daily ceiling), and only if the lease outlasts the call.
    async fn start_push_ticket(&mut self, component: &Arc<Component>) {
        let stop = self.stop.clone();
        let slot = tokio::select! {
            slot = self.ctx.wechat.slot() => slot,
            () = stop.cancelled() => return,
        };
        let started = Instant::now();
        let rules = PermitRules {
            api: Api::StartPushTicket,
            daily_limit: self.ctx.refresh.daily_call_limits.of(Api::StartPushTicket),
            forced_min_interval: None,
            forced_daily_limit: None,
            ..self.permit_rules()
        };
        let ask = self.lease.permit(rules);
        let permit = tokio::select! {
            permit = self.ctx.observe(Operation::Permit, ask) => permit,
            () = stop.cancelled() => return,
        };
        match permit {
            Ok(Permit::Granted { lease_left, .. }) => {
                if !self.send_by(started + lease_left) {
                    return;
                }
                match self.ctx.wechat.start_push_ticket(&slot, component).await {
                    Ok(()) => tracing::warn!(
                        "asked WeChat to push a component_verify_ticket (api_start_push_ticket): \
                         no usable one came for open_platform.start_push_ticket_after; check \
                         that the callback URL reaches a replica"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot ask WeChat to push a component_verify_ticket"
                    ),
                }
            }
            Ok(Permit::QuotaSpent { calls_today }) => {
                let wait = self.ticket_wait.as_mut();
                if let Some(wait) = wait.filter(|w| !w.ceiling_reported) {
                    wait.ceiling_reported = true;
                    tracing::warn!(
                        calls_today,
                        "not asking WeChat to push a component_verify_ticket: today's \
                         refresh.daily_call_limits.start_push_ticket is spent"
                    );
                }
            }
            Ok(_) => tracing::debug!("no permit to ask WeChat for a verify ticket"),
            Err(e) => {
                tracing::debug!(error = %e, "cannot get a permit to ask WeChat for a verify ticket");
            }
        }
    }

    /// WeChat refused `ticket` (61005 expired, 61006 invalid): it is never
    /// used again; the next usable one (an older one still in its 12 hours,
    /// or the next push) is.
    /// Whether it was marked (else the same ticket may be tried again: the
    /// caller backs off).
    pub(super) async fn reject_ticket(
        &self,
        component: &Arc<Component>,
        ticket: &StoredTicket,
        errcode: Option<i64>,
    ) -> bool {
        let tickets = Tickets::new(self.ctx.store.clone());
        // Expired: those pushed before it expired before it.
        let older_too = errcode == Some(61005);
        let reject = tickets.reject(component.appid.as_str(), ticket, older_too);
        match self.ctx.observe(Operation::ReadVerifyTicket, reject).await {
            Ok(_) => {
                tracing::warn!(
                create_time = %humantime::format_rfc3339_seconds(ticket.create_time),
                "WeChat refused the component_verify_ticket: it is marked rejected; waiting for \
                 the next push"
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "WeChat refused the component_verify_ticket, and it cannot be marked rejected"
                );
                false
            }
        }
    }
}
