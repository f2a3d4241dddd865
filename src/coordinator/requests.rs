//! The coordinator's share of refresh requests: each poll hands the
//! requests of held accounts to their refreshers, deletes what it read, and
//! dates the requests filed without a date so that they expire.

use std::collections::HashMap;

use wxtokend_reader::{AccountId, CredentialKind, RefreshReason};

use super::{Coordinator, REQUESTS_PER_POLL};
use crate::coordination::{LeaseId, RefreshRequest, Requests};
use crate::metrics::Operation;

impl Coordinator {
    /// Hands the open refresh requests of held accounts to their
    /// refreshers, oldest first: per account, the newest reported generation
    /// and one manual request. Unreadable requests are deleted and logged.
    pub(super) async fn dispatch_requests(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let requests = Requests::new(self.ctx.store.database());
        // Nearly always there is none: ask that first, with one small query,
        // rather than name every held account each second (at 10,000
        // accounts, that query was 40 % of an idle replica's CPU).
        match self.observed(Operation::Requests, requests.any()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read refresh requests");
                return;
            }
        }
        let ids: Vec<AccountId> = self
            .held
            .values()
            .map(|held| held.lease.owner().app_id.clone())
            .collect();
        let open = requests.open(&ids, REQUESTS_PER_POLL);
        let open = match self.observed(Operation::Requests, open).await {
            Ok(open) => open,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read refresh requests");
                return;
            }
        };
        let mut handled: Vec<_> = open.requests.iter().map(|r| r.id.clone()).collect();
        if let Some((_, problem)) = open.unreadable.first() {
            tracing::warn!(
                count = open.unreadable.len(),
                first_problem = problem,
                "deleting unreadable refresh requests (see the README for their fields)"
            );
            handled.extend(open.unreadable.into_iter().filter_map(|(id, _)| id));
        }
        for request in summarize(open.requests) {
            let slot = self
                .held
                .get(&lease_of(&request))
                .and_then(|held| held.requests.get(&request.kind));
            match slot {
                // A manual request comes after a report and takes its place:
                // either way one refresh follows.
                Some(slot) => slot.put(request),
                None => tracing::warn!(
                    account = %request.app_id,
                    kind = %request.kind,
                    "refresh request for a credential this account does not keep; deleted"
                ),
            }
        }
        let deleted = self
            .observed(Operation::Requests, requests.delete(&handled))
            .await;
        if let Err(e) = deleted {
            tracing::debug!(error = %e, "cannot delete handled refresh requests");
        }
    }

    /// Requests filed without a date get one, so that they expire like the
    /// others whichever account they name.
    pub(super) async fn date_undated_requests(&self) {
        let requests = Requests::new(self.ctx.store.database());
        let dated = self
            .observed(
                Operation::Requests,
                requests.date_undated(self.ctx.store.clock().now()),
            )
            .await;
        match dated {
            Ok(0) => {}
            Ok(dated) => tracing::info!(dated, "dated refresh requests filed without requested_at"),
            Err(e) => tracing::debug!(error = %e, "cannot date undated refresh requests"),
        }
    }
}

/// The lease whose refreshers keep the credential a request names.
fn lease_of(request: &RefreshRequest) -> LeaseId {
    match request.kind {
        CredentialKind::ComponentAccessToken => LeaseId::component(&request.app_id),
        _ => LeaseId::account(&request.app_id),
    }
}

/// Reduces a batch of requests to what matters: per account and kind, the
/// report of the highest generation and at most one manual request.
/// Requests for kinds an account does not keep are dropped.
fn summarize(requests: Vec<RefreshRequest>) -> Vec<RefreshRequest> {
    type Key = (AccountId, CredentialKind);
    let mut reported: HashMap<Key, RefreshRequest> = HashMap::new();
    let mut manual: HashMap<Key, RefreshRequest> = HashMap::new();
    for request in requests {
        let key = (request.app_id.clone(), request.kind);
        match request.reason {
            RefreshReason::ReportedInvalid => {
                let entry = reported.entry(key).or_insert(request.clone());
                if request.generation > entry.generation {
                    *entry = request;
                }
            }
            _ => {
                manual.entry(key).or_insert(request);
            }
        }
    }
    reported.into_values().chain(manual.into_values()).collect()
}
