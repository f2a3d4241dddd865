//! The refresh rules, driven with synthetic times and outcomes.

use super::*;
use crate::coordination::quota::quota_day;
use mongodb::bson::oid::ObjectId;
use secrecy::SecretString;
use wxtokend_reader::{AccountId, CredentialKind};

const HOUR: Duration = Duration::from_secs(3600);
const TWO_HOURS: Duration = Duration::from_secs(7200);

fn settings() -> RefreshSettings {
    RefreshSettings {
        margin: Duration::from_secs(600),
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        permanent_error_retry: Duration::from_secs(1800),
        request_poll_interval: Duration::from_secs(1),
        forced_min_interval: Duration::from_secs(30),
        daily_call_limits: crate::config::DailyCallLimits::all(1800),
        retired_daily_call_limit: None,
    }
}

/// 2026-11-24 12:00:00 UTC (20:00 in Beijing).
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_521_600)
}

fn fetched(value: &str, at: SystemTime, lifetime: Duration) -> FetchedCredential {
    FetchedCredential {
        value: SecretString::from(value.to_owned()),
        expires_in: lifetime,
        fetched_at: at,
    }
}

fn stored(generation: i64, fetched_at: SystemTime, lifetime: Duration) -> Credential {
    Credential {
        component_appid: None,
        app_id: AccountId::new("wx1"),
        kind: CredentialKind::AccessToken,
        value: SecretString::from("STORED"),
        expires_in: lifetime,
        fetched_at,
        expires_at: fetched_at + lifetime,
        generation: Generation(generation),
        reason: Some(RefreshReason::Scheduled),
        fetched_by: "test".into(),
    }
}

fn request(reason: RefreshReason, generation: Option<i64>) -> RefreshRequest {
    RefreshRequest {
        id: ObjectId::new().into(),
        app_id: AccountId::new("wx1"),
        component_appid: None,
        kind: CredentialKind::AccessToken,
        reason,
        generation: generation.map(Generation),
    }
}

/// A machine holding generation 1, fetched at `t0` for two hours.
fn holding() -> Machine {
    let mut m = Machine::new(settings(), false);
    m.loaded(Some(&stored(1, t0(), TWO_HOURS)));
    m
}

#[test]
fn a_valid_stored_token_is_reused_and_refreshed_at_its_margin() {
    let mut m = Machine::new(settings(), false);
    assert_eq!(m.next(t0()), Action::Load);
    let now = t0() + HOUR;
    m.loaded(Some(&stored(1, t0(), TWO_HOURS)));
    // Due at expiry minus the 10-minute margin: 50 minutes from now.
    assert_eq!(m.next(now), Action::Wait(Duration::from_secs(3000)));
    let due = t0() + TWO_HOURS - Duration::from_secs(600);
    assert_eq!(m.next(due), Action::Fetch(RefreshReason::Scheduled));
}

#[test]
fn nothing_valid_stored_means_a_startup_fetch_now() {
    let mut m = Machine::new(settings(), false);
    m.loaded(Some(&stored(3, t0() - TWO_HOURS, TWO_HOURS)));
    assert_eq!(m.next(t0()), Action::Fetch(RefreshReason::Startup));
    let mut empty = Machine::new(settings(), false);
    empty.loaded(None);
    assert_eq!(empty.next(t0()), Action::Fetch(RefreshReason::Startup));
}

#[test]
fn the_schedule_follows_the_returned_expires_in() {
    let mut m = holding();
    let at = t0() + Duration::from_secs(6600);
    m.fetched(
        fetched("NEW", at, Duration::from_secs(3000)),
        RefreshReason::Scheduled,
    );
    assert_eq!(m.next(at), Action::Store);
    m.stored(Generation(2));
    // 3000 s of life, 600 s of margin: due 2400 s after the fetch.
    assert_eq!(m.next(at), Action::Wait(Duration::from_secs(2400)));
}

#[test]
fn the_margin_is_capped_at_half_a_short_life() {
    let mut m = Machine::new(settings(), false);
    let life = Duration::from_secs(60);
    m.loaded(Some(&stored(1, t0(), life)));
    assert_eq!(m.next(t0()), Action::Wait(Duration::from_secs(30)));
}

#[test]
fn transient_failures_back_off_and_a_success_resets() {
    let mut m = Machine::new(settings(), false);
    m.loaded(None);
    let mut now = t0();
    for cap in [1, 2, 4, 8, 16, 32, 60, 60] {
        assert_eq!(m.next(now), Action::Fetch(RefreshReason::Startup));
        let wait = m.fetch_failed(ErrorClass::Transient, None, now);
        let cap = Duration::from_secs(cap);
        assert!(wait >= cap / 2 && wait <= cap, "{wait:?} vs {cap:?}");
        assert_eq!(m.next(now), Action::Wait(wait));
        now += wait;
    }
    assert_eq!(m.fetch_attempts(), 8);
    m.fetched(fetched("T", now, TWO_HOURS), RefreshReason::Startup);
    assert_eq!(m.fetch_attempts(), 0);
}

#[test]
fn a_permanent_error_waits_the_long_retry_and_keeps_the_good_token() {
    let mut m = holding();
    let due = t0() + Duration::from_secs(6600);
    assert_eq!(m.next(due), Action::Fetch(RefreshReason::Scheduled));
    assert_eq!(
        m.fetch_failed(ErrorClass::Permanent, None, due),
        Duration::from_secs(1800)
    );
    assert!(matches!(m.state(), State::Holding(Some(h)) if h.generation == Generation(1)));
    assert_eq!(m.next(due), Action::Wait(Duration::from_secs(1800)));
}

#[test]
fn wechats_own_retry_time_wins_over_the_class_default() {
    let mut m = holding();
    let due = t0() + Duration::from_secs(6600);
    // 89507: an administrator refused this IP; WeChat lifts it in an hour.
    let hour = Duration::from_secs(3600);
    assert_eq!(m.fetch_failed(ErrorClass::Permanent, Some(hour), due), hour);
    assert_eq!(m.next(due), Action::Wait(hour));
}

#[test]
fn a_spent_quota_waits_for_midnight_in_beijing_asking_the_permit_again_meanwhile() {
    let mut m = holding();
    let now = t0() + Duration::from_secs(6600); // 21:50 in Beijing
    let (reset, wait) = m.quota_spent(now);
    let midnight = next_quota_reset(now);
    assert_eq!(quota_day(midnight), "2026-11-25");
    let earliest = midnight.duration_since(now).expect("later");
    assert!(reset >= earliest && reset < earliest + QUOTA_RESET_SPREAD);
    // The permit (MongoDB, not WeChat) is asked again a minute later, in
    // case the stop was cleared.
    assert_eq!(wait, QUOTA_RECHECK);
    assert_eq!(m.next(now + wait / 2), Action::Wait(wait / 2));
    // Seconds before midnight, the next ask comes no later than the reset.
    let late = midnight - Duration::from_secs(10);
    let (reset, wait) = m.quota_spent(late);
    assert!(reset >= Duration::from_secs(10) && reset < Duration::from_secs(70));
    assert_eq!(wait, reset.min(QUOTA_RECHECK));
}

#[test]
fn a_report_of_the_newest_generation_forces_one_refresh() {
    let mut m = holding();
    assert_eq!(
        m.request(&request(RefreshReason::ReportedInvalid, Some(0))),
        Requested::Ignored {
            newest: Some(Generation(1))
        }
    );
    assert_eq!(
        m.request(&request(RefreshReason::ReportedInvalid, None)),
        Requested::Ignored {
            newest: Some(Generation(1))
        }
    );
    assert_eq!(m.next(t0()), Action::Wait(Duration::from_secs(6600)));
    assert_eq!(
        m.request(&request(RefreshReason::ReportedInvalid, Some(1))),
        Requested::Accepted(RefreshReason::ReportedInvalid)
    );
    assert_eq!(m.next(t0()), Action::Fetch(RefreshReason::ReportedInvalid));
    // Wanted until a fetch succeeds, spaced as the permit says.
    let wait = m.too_soon(Duration::from_secs(20), t0());
    assert_eq!(m.next(t0()), Action::Wait(wait));
    let later = t0() + wait;
    assert_eq!(m.next(later), Action::Fetch(RefreshReason::ReportedInvalid));
    m.fetched(
        fetched("NEW", later, TWO_HOURS),
        RefreshReason::ReportedInvalid,
    );
    assert_eq!(m.forced(), None);
}

#[test]
fn a_manual_request_refreshes_now_whatever_is_held() {
    let mut m = holding();
    assert_eq!(
        m.request(&request(RefreshReason::Manual, None)),
        Requested::Accepted(RefreshReason::Manual)
    );
    assert_eq!(m.next(t0()), Action::Fetch(RefreshReason::Manual));
    m.forced_spent();
    assert_eq!(m.next(t0()), Action::Wait(Duration::from_secs(6600)));
}

#[test]
fn a_repeat_answer_never_extends_the_stored_expiry_and_tries_again_at_half_the_time_left() {
    let mut m = holding();
    let stored_expiry = t0() + TWO_HOURS;
    let due = t0() + Duration::from_secs(6600);
    // WeChat answers with the stored ticket and a full 7200 s again.
    m.fetched(fetched("STORED", due, TWO_HOURS), RefreshReason::Scheduled);
    m.repeated(Generation(1), stored_expiry, due);
    assert!(matches!(m.state(), State::Holding(Some(h))
        if h.generation == Generation(1) && h.expires_at == stored_expiry));
    // 600 s were left: the next try comes after 300, not two hours later.
    assert_eq!(m.next(due), Action::Wait(Duration::from_secs(300)));
    let later = due + Duration::from_secs(300);
    assert_eq!(m.next(later), Action::Fetch(RefreshReason::Scheduled));
    m.fetched(
        fetched("STORED", later, TWO_HOURS),
        RefreshReason::Scheduled,
    );
    m.repeated(Generation(1), stored_expiry, later);
    assert_eq!(m.next(later), Action::Wait(Duration::from_secs(150)));
    // A new value ends it: scheduled from its own life again.
    let after = stored_expiry + Duration::from_millis(500);
    m.fetched(fetched("NEW", after, TWO_HOURS), RefreshReason::Startup);
    m.stored(Generation(2));
    assert_eq!(m.next(after), Action::Wait(Duration::from_secs(6600)));
}

/// Repeats `value` to every fetch from `from` until the stored expiry has
/// passed: the times of the calls made.
fn calls_while_repeated(
    m: &mut Machine,
    stored_expiry: SystemTime,
    from: SystemTime,
) -> Vec<SystemTime> {
    let mut now = from;
    let mut calls = Vec::new();
    while now <= stored_expiry {
        match m.next(now) {
            Action::Wait(wait) => now += wait,
            Action::Fetch(reason) => {
                calls.push(now);
                m.fetched(fetched("STORED", now, TWO_HOURS), reason);
                m.repeated(Generation(1), stored_expiry, now);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    calls
}

#[test]
fn repeat_tries_end_at_the_stored_expiry_itself_never_after_it() {
    for (margin, life) in [(600, 7200), (2, 4), (3, 6), (10, 60), (1, 4)] {
        let mut settings = settings();
        settings.margin = Duration::from_secs(margin);
        let life = Duration::from_secs(life);
        let mut m = Machine::new(settings, false);
        m.loaded(Some(&stored(1, t0(), life)));
        let stored_expiry = t0() + life;
        let calls = calls_while_repeated(&mut m, stored_expiry, t0());
        let margin = effective_margin(Duration::from_secs(margin), life);
        assert_eq!(calls.first(), Some(&(stored_expiry - margin)));
        // The last try lands at the stored expiry, not a moment later:
        // readers lose the value there, and a new one is wanted at once.
        assert_eq!(calls.last(), Some(&stored_expiry), "margin {margin:?}");
        let bound = repeat_calls_until_expiry(margin);
        assert!(
            calls.len() as u32 <= bound,
            "margin {margin:?}: {} calls, bound {bound}",
            calls.len()
        );
        // Never sooner than a second apart before the expiry.
        for pair in calls.windows(2) {
            let gap = pair[1].duration_since(pair[0]).expect("in order");
            assert!(
                gap >= MIN_REPEAT_RETRY || pair[1] == stored_expiry,
                "{gap:?}"
            );
        }
    }
    assert_eq!(repeat_calls_until_expiry(Duration::from_secs(600)), 11);
    assert_eq!(repeat_calls_until_expiry(Duration::from_secs(2)), 3);
}

#[test]
fn past_the_stored_expiry_a_repeated_value_is_asked_for_again_soon_and_less_often() {
    let mut m = holding();
    let stored_expiry = t0() + TWO_HOURS;
    // WeChat's copy outlives ours by the latency of the call that fetched it.
    let mut now = stored_expiry;
    let mut caps = Vec::new();
    for attempt in 0..4 {
        assert!(matches!(m.next(now), Action::Fetch(_)), "attempt {attempt}");
        m.fetched(fetched("STORED", now, TWO_HOURS), RefreshReason::Scheduled);
        m.repeated(Generation(1), stored_expiry, now);
        let Action::Wait(wait) = m.next(now) else {
            panic!("a wait after a repeat")
        };
        let cap = EXPIRED_REPEAT_RETRY * 2u32.pow(attempt);
        assert!(wait >= cap / 2 && wait <= cap, "{wait:?} vs {cap:?}");
        caps.push(cap);
        now += wait;
    }
    // A new value resets it.
    m.fetched(fetched("NEW", now, TWO_HOURS), RefreshReason::Startup);
    m.stored(Generation(2));
    let next_expiry = now + TWO_HOURS;
    let mut late = next_expiry;
    assert!(matches!(m.next(late), Action::Fetch(_)));
    m.fetched(fetched("NEW", late, TWO_HOURS), RefreshReason::Scheduled);
    m.repeated(Generation(2), next_expiry, late);
    let Action::Wait(wait) = m.next(late) else {
        panic!("a wait")
    };
    assert!(wait <= EXPIRED_REPEAT_RETRY, "{wait:?}");
    late += wait;
    assert!(matches!(m.next(late), Action::Fetch(_)));
}

#[test]
fn a_counted_down_repeat_makes_the_earlier_expiry_the_one_to_keep() {
    let mut m = holding();
    let stored_expiry = t0() + TWO_HOURS;
    let due = t0() + Duration::from_secs(6600);
    // WeCom answers the same token with 598 s left (rounded down).
    m.fetched(
        fetched("STORED", due, Duration::from_secs(598)),
        RefreshReason::Scheduled,
    );
    m.repeated(Generation(1), stored_expiry, due);
    let earlier = due + Duration::from_secs(598);
    assert!(matches!(m.state(), State::Holding(Some(h)) if h.expires_at == earlier));
    assert_eq!(m.next(due), Action::Wait(Duration::from_secs(299)));
    // ... and at the end it says 0: still a repeat, asked again where
    // readers lose it, then soon after.
    let end = earlier;
    m.fetched(
        fetched("STORED", end, Duration::ZERO),
        RefreshReason::Scheduled,
    );
    // Not dropped as expired: the store recognises the repeat.
    assert_eq!(m.next(end), Action::Store);
    m.repeated(Generation(1), stored_expiry, end);
    assert_eq!(m.next(end), Action::Wait(Duration::from_secs(2)));
    m.fetched(
        fetched("STORED", stored_expiry, Duration::ZERO),
        RefreshReason::Scheduled,
    );
    m.repeated(Generation(1), stored_expiry, stored_expiry);
    assert!(matches!(m.next(stored_expiry), Action::Wait(w) if w <= EXPIRED_REPEAT_RETRY));
}

#[test]
fn an_expired_stored_value_is_held_to_recognise_a_repeat_but_fetched_at_once() {
    let mut m = Machine::new(settings(), false);
    m.loaded(Some(&stored(3, t0() - TWO_HOURS, TWO_HOURS)));
    assert_eq!(m.next(t0()), Action::Fetch(RefreshReason::Startup));
    assert!(m.held_value().is_some());
    let mut empty = Machine::new(settings(), false);
    empty.loaded(None);
    assert!(empty.held_value().is_none());
}

/// A stable_token machine holding generation 1, whose report was accepted.
fn reported_stable() -> Machine {
    let mut m = Machine::new(settings(), true);
    m.loaded(Some(&stored(1, t0(), TWO_HOURS)));
    assert_eq!(
        m.request(&request(RefreshReason::ReportedInvalid, Some(1))),
        Requested::Accepted(RefreshReason::ReportedInvalid)
    );
    m
}

#[test]
fn a_reported_stable_token_is_asked_for_plainly_first_and_forced_only_if_it_comes_back() {
    let mut m = reported_stable();
    let now = t0() + HOUR;
    assert_eq!(m.next(now), Action::Fetch(RefreshReason::ReportedInvalid));
    assert!(!m.force_refresh(), "the first request is a plain one");
    m.fetched(
        fetched("STORED", now, Duration::from_secs(3600)),
        RefreshReason::ReportedInvalid,
    );
    m.repeated(Generation(1), t0() + TWO_HOURS, now);
    // The reported token came back: now force, at once.
    assert_eq!(m.next(now), Action::Fetch(RefreshReason::ReportedInvalid));
    assert!(m.force_refresh());
    m.fetched(
        fetched("NEW", now, TWO_HOURS),
        RefreshReason::ReportedInvalid,
    );
    assert!(m.pending().is_some_and(|p| p.forced));
    assert!(!m.force_refresh());
    m.stored(Generation(2));
    assert_eq!(m.next(now), Action::Wait(Duration::from_secs(6600)));

    // A forced request WeChat answered with the same token (a force
    // within 30 s does nothing there) is not forced again.
    let mut m = reported_stable();
    m.fetched(fetched("STORED", now, HOUR), RefreshReason::ReportedInvalid);
    m.repeated(Generation(1), t0() + TWO_HOURS, now);
    assert!(m.force_refresh());
    m.fetched(fetched("STORED", now, HOUR), RefreshReason::ReportedInvalid);
    m.repeated(Generation(1), t0() + TWO_HOURS, now);
    assert!(!m.force_refresh());
    assert_eq!(m.forced(), None);
    assert!(matches!(m.next(now), Action::Wait(_)));
}

/// Someone else forced a refresh: WeChat's current token is another one,
/// the answer to the report. Stored, or found stored after a write whose
/// answer was lost (held with the earlier of the two expiries), it is not
/// forced again: that would rotate the value just stored.
#[test]
fn a_reported_stable_token_replaced_by_a_plain_request_spends_no_force() {
    let now = t0() + HOUR;
    let stored_expiry = now + TWO_HOURS - Duration::from_secs(1);
    for lost_answer in [false, true] {
        let mut m = reported_stable();
        assert_eq!(m.next(now), Action::Fetch(RefreshReason::ReportedInvalid));
        m.fetched(
            fetched("NEW", now, TWO_HOURS),
            RefreshReason::ReportedInvalid,
        );
        assert!(m.pending().is_some_and(|p| !p.forced));
        let expires_at = if lost_answer {
            m.landed(Generation(2), stored_expiry);
            stored_expiry
        } else {
            m.stored(Generation(2));
            now + TWO_HOURS
        };
        assert!(!m.force_refresh(), "lost answer: {lost_answer}");
        assert_eq!(m.forced(), None, "lost answer: {lost_answer}");
        let due = expires_at - settings().margin;
        assert_eq!(
            m.next(now),
            Action::Wait(due.duration_since(now).expect("later")),
            "lost answer: {lost_answer}"
        );
    }
}

#[test]
fn without_a_forced_refresh_a_reported_value_that_comes_back_is_not_forced() {
    let mut m = holding();
    m.request(&request(RefreshReason::ReportedInvalid, Some(1)));
    let now = t0() + HOUR;
    m.fetched(fetched("STORED", now, HOUR), RefreshReason::ReportedInvalid);
    m.repeated(Generation(1), t0() + TWO_HOURS, now);
    assert!(!m.force_refresh());
    assert_eq!(m.forced(), None);
    // WeChat says it is current: it is refreshed on its usual schedule.
    assert_eq!(m.next(now), Action::Wait(Duration::from_secs(3000)));
}

#[test]
fn a_fetched_token_is_kept_through_an_outage_and_stored_without_a_new_fetch() {
    let mut m = holding();
    let due = t0() + Duration::from_secs(6600);
    m.fetched(fetched("NEW", due, TWO_HOURS), RefreshReason::Scheduled);
    let mut now = due;
    for _ in 0..5 {
        assert_eq!(m.next(now), Action::Store);
        now += m.store_failed();
    }
    // A report during the outage waits for the new generation.
    assert!(matches!(
        m.request(&request(RefreshReason::ReportedInvalid, Some(1))),
        Requested::Ignored { newest: None }
    ));
    assert_eq!(m.next(now), Action::Store);
    m.stored(Generation(2));
    assert!(matches!(m.state(), State::Holding(Some(h)) if h.generation == Generation(2)));
}

#[test]
fn a_fetched_token_that_expired_unstored_is_dropped_and_fetched_again() {
    let mut m = holding();
    let due = t0() + Duration::from_secs(6600);
    m.fetched(fetched("NEW", due, HOUR), RefreshReason::Scheduled);
    let late = due + HOUR;
    assert_eq!(m.next(late), Action::DropExpired);
    assert_eq!(m.next(late), Action::Fetch(RefreshReason::Startup));
    // What is stored is still known, to recognise WeChat repeating it.
    assert!(matches!(m.state(), State::Holding(Some(h)) if h.generation == Generation(1)));
}

#[test]
fn a_fenced_refresher_does_nothing() {
    let mut m = holding();
    m.fetched(fetched("NEW", t0(), TWO_HOURS), RefreshReason::Scheduled);
    m.fenced();
    assert_eq!(m.next(t0()), Action::Wait(FENCED_IDLE));
    assert!(m.pending().is_none());
}

#[test]
fn a_manual_refresh_overrides_the_wait_after_a_permanent_error_but_not_the_quota() {
    let mut m = holding();
    let due = t0() + Duration::from_secs(6600);
    m.fetch_failed(ErrorClass::Permanent, None, due);
    assert_eq!(m.next(due), Action::Wait(Duration::from_secs(1800)));
    // The operator fixed the IP whitelist and asks for a refresh now.
    m.request(&request(RefreshReason::Manual, None));
    assert_eq!(m.next(due), Action::Fetch(RefreshReason::Manual));
    // A spent quota still holds, manual or not.
    let (_, wait) = m.quota_spent(due);
    m.request(&request(RefreshReason::Manual, None));
    assert_eq!(m.next(due), Action::Wait(wait));
    // A report does not override the backoff either.
    let mut reported = holding();
    reported.fetch_failed(ErrorClass::Permanent, None, due);
    reported.request(&request(RefreshReason::ReportedInvalid, Some(1)));
    assert_eq!(reported.next(due), Action::Wait(Duration::from_secs(1800)));
}

#[test]
fn a_transient_failure_never_waits_past_the_expiry_of_the_credential_relied_on() {
    let mut m = holding();
    let expiry = t0() + TWO_HOURS;
    // Failures in a row push the backoff to retry_max (60 s here)...
    let mut wait = Duration::ZERO;
    for _ in 0..10 {
        wait = m.fetch_failed(ErrorClass::Transient, None, t0() + HOUR);
    }
    assert!(wait >= Duration::from_secs(30), "{wait:?}");
    // ...but 2 s before the expiry, the next try comes at the expiry.
    let late = expiry - Duration::from_secs(2);
    assert_eq!(
        m.fetch_failed(ErrorClass::Transient, None, late),
        Duration::from_secs(2)
    );
    // Past it, the backoff alone decides.
    let after = expiry + Duration::from_secs(1);
    assert!(m.fetch_failed(ErrorClass::Transient, None, after) >= Duration::from_secs(30));
    // WeChat's own word on when still wins.
    let hour = Duration::from_secs(3600);
    assert_eq!(
        m.fetch_failed(ErrorClass::Transient, Some(hour), late),
        hour
    );
}

#[test]
fn a_manual_refresh_never_replaces_a_pending_report() {
    let mut m = holding();
    m.request(&request(RefreshReason::ReportedInvalid, Some(1)));
    assert_eq!(
        m.request(&request(RefreshReason::Manual, None)),
        Requested::Accepted(RefreshReason::ReportedInvalid)
    );
    assert_eq!(m.forced(), Some(RefreshReason::ReportedInvalid));
}
