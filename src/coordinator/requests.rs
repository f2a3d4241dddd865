//! The coordinator's share of refresh requests: each poll hands the
//! requests of held accounts to their refreshers, deletes what it read, and
//! dates the requests filed without a date so that they expire.

use std::collections::HashMap;

use wxtokend_reader::{CredentialKind, Owner, RefreshReason};

use super::{Coordinator, REQUESTS_PER_POLL};
use crate::coordination::{LeaseId, RefreshRequest, Requests};
use crate::metrics::Operation;

impl Coordinator {
    /// Hands the open refresh requests of held accounts (and authorizers)
    /// to their refreshers, oldest first: per credential, the newest
    /// reported generation and one manual request. Unreadable requests are
    /// deleted and logged.
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
        let owners: Vec<Owner> = self
            .held
            .values()
            .map(|held| held.lease.owner().clone())
            .collect();
        let open = requests.open(&owners, REQUESTS_PER_POLL);
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
        for (lease, request) in summarize(open.requests) {
            let slot = self
                .held
                .get(&lease)
                .and_then(|held| held.requests.get(&request.kind));
            match slot {
                // A manual request comes after a report and takes its place:
                // either way one refresh follows.
                Some(slot) => slot.put(request),
                None => tracing::warn!(
                    account = %lease,
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
    match (&request.component_appid, request.kind) {
        (Some(component), _) => LeaseId::authorizer(component, &request.app_id),
        (None, CredentialKind::ComponentAccessToken) => LeaseId::component(&request.app_id),
        (None, _) => LeaseId::account(&request.app_id),
    }
}

/// Reduces a batch of requests to what matters: per lease and kind, the
/// report of the highest generation and at most one manual request, each
/// with the lease whose refreshers keep it.
fn summarize(requests: Vec<RefreshRequest>) -> Vec<(LeaseId, RefreshRequest)> {
    type Key = (LeaseId, CredentialKind);
    let mut reported: HashMap<Key, RefreshRequest> = HashMap::new();
    let mut manual: HashMap<Key, RefreshRequest> = HashMap::new();
    for request in requests {
        let key = (lease_of(&request), request.kind);
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
    reported
        .into_iter()
        .chain(manual)
        .map(|((lease, _), request)| (lease, request))
        .collect()
}

#[cfg(test)]
mod tests {
    use mongodb::bson::Bson;
    use wxtokend_reader::{AccountId, Generation};

    use super::*;

    fn request(
        component: Option<&str>,
        kind: CredentialKind,
        reason: RefreshReason,
        generation: Option<i64>,
    ) -> RefreshRequest {
        RefreshRequest {
            id: Bson::Null,
            app_id: AccountId::new("wxA"),
            component_appid: component.map(AccountId::new),
            kind,
            reason,
            generation: generation.map(Generation),
        }
    }

    /// An account's and an authorizer's requests of one appid go to their
    /// own leases and are summarized apart: neither hides the other.
    #[test]
    fn each_request_reaches_the_lease_of_its_owner() {
        use CredentialKind::{AccessToken, AuthorizerAccessToken, ComponentAccessToken};
        use RefreshReason::{Manual, ReportedInvalid};
        let summarized = summarize(vec![
            request(None, AccessToken, ReportedInvalid, Some(3)),
            request(Some("wxC"), AuthorizerAccessToken, ReportedInvalid, Some(7)),
            request(Some("wxC"), AuthorizerAccessToken, ReportedInvalid, Some(8)),
            request(Some("wxD"), AuthorizerAccessToken, Manual, None),
            request(None, ComponentAccessToken, Manual, None),
        ]);
        let mut got: Vec<(String, CredentialKind, Option<Generation>)> = summarized
            .into_iter()
            .map(|(lease, r)| (lease.to_string(), r.kind, r.generation))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("open:wxA".to_owned(), ComponentAccessToken, None),
                (
                    "open:wxC:wxA".to_owned(),
                    AuthorizerAccessToken,
                    Some(Generation(8))
                ),
                ("open:wxD:wxA".to_owned(), AuthorizerAccessToken, None),
                ("wxA".to_owned(), AccessToken, Some(Generation(3))),
            ]
        );
    }
}
