//! Every way WeChat hands out values (the fake's modes), each under the
//! real daemon with time-compressed lives, while readers run the README's
//! query (uncached) in a loop and ask WeChat whether what they got is
//! accepted at the moment they asked. What each mode promises readers:
//!
//! - a new value every call (`/cgi-bin/token`), or a new one in the last
//!   window with the old one kept (`stable_token`): no moment without a
//!   valid credential, nothing rejected;
//! - the same value while it is valid (`getticket`, WeCom), with the full
//!   `expires_in` or counting down: WeChat issues the next value only once
//!   the stored one died, so the query alone may find nothing for about a
//!   call's latency after each stored expiry (bounded here), while the
//!   `Reader` waits for the next value then and is never without one;
//!   never a rejected value; a repeat never moves a stored expiry, and
//!   calls per value are bounded;
//! - early invalidation (WeCom): readers that follow the README's recovery
//!   (report, read again) see each dead token rejected at most once and
//!   get a new one within seconds;
//! - `stable_token`'s forced refresh, which kills the previous token at
//!   once: readers are never rejected a token other than one reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fake_wechat::{Endpoint, Mode};
use mongodb::bson::{doc, Document};
use tokio::task::JoinHandle;
use wxtokend_reader::{AccountId, CredentialKind, Generation, ReadError, Reader};

use crate::support::store::Api;
use crate::support::{eventually, Scenario, TestAccount, WAIT};

/// Pause between one reader's samples.
const SAMPLE_PAUSE: Duration = Duration::from_millis(25);

/// The longest readers may find nothing after a stored expiry, where WeChat
/// issues a new value only once the old one died: the first tries past the
/// expiry (25–50 ms apart, doubling) and a call, with room for a loaded
/// 2-core CI machine (tens of milliseconds when idle).
const EDGE_BOUND: Duration = Duration::from_millis(500);

/// The daemon stamps with MongoDB's clock, the fake with this host's: the
/// same clock here, read a few milliseconds apart.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(100);

/// The longest from a rejection to an accepted new token, for a reader
/// following the README's recovery: the daemon's request poll (200 ms in
/// tests), a call and a write, with room for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(5);

/// One credential the readers follow.
#[derive(Clone)]
struct Target {
    /// The mode, as printed.
    label: &'static str,
    account: String,
    kind: CredentialKind,
}

impl Target {
    fn new(label: &'static str, account: &TestAccount, kind: CredentialKind) -> Self {
        Self {
            label,
            account: account.id.clone(),
            kind,
        }
    }
}

/// What one reader saw of one credential.
#[derive(Default)]
struct Tally {
    taken: u64,
    /// When the `Reader` said no credential is valid (expired or none).
    missing: Vec<SystemTime>,
    /// Reads that failed otherwise (MongoDB slow or down on a loaded
    /// machine): not what the test measures; printed, not asserted.
    errors: u64,
    /// When the README's query alone (one `find`, as any language runs
    /// it) found no valid document.
    raw_missing: Vec<SystemTime>,
    /// Generations WeChat did not accept at the moment they were read.
    rejected: Vec<i64>,
    /// Samples that found only a generation this reader had reported (the
    /// reader reads again until the refresh lands).
    waiting: u64,
    /// From a rejection to the first accepted newer generation.
    recoveries: Vec<Duration>,
}

impl Tally {
    /// The readers' tallies together.
    fn sum<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Tally {
        let mut sum = Tally::default();
        for t in tallies {
            sum.taken += t.taken;
            sum.missing.extend(&t.missing);
            sum.errors += t.errors;
            sum.raw_missing.extend(&t.raw_missing);
            sum.rejected.extend(&t.rejected);
            sum.waiting += t.waiting;
            sum.recoveries.extend(&t.recoveries);
        }
        sum
    }
}

/// Readers sampling until stopped.
struct Readers {
    done: Arc<AtomicBool>,
    tasks: Vec<(Target, JoinHandle<Tally>)>,
}

impl Readers {
    /// `per_target` readers for each target, from now on.
    async fn start(s: &Arc<Scenario>, targets: &[Target], per_target: usize) -> Readers {
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for target in targets {
            for _ in 0..per_target {
                let reader = Reader::connect(&s.db.uri, &s.db.name)
                    .await
                    .expect("reader");
                let task = tokio::spawn(read(s.clone(), reader, target.clone(), done.clone()));
                tasks.push((target.clone(), task));
            }
        }
        Readers { done, tasks }
    }

    /// Stops them: each target with its readers' tallies, in the order
    /// the targets were given.
    async fn stop(self) -> Vec<(Target, Vec<Tally>)> {
        self.done.store(true, Ordering::Relaxed);
        let mut by_target: Vec<(Target, Vec<Tally>)> = Vec::new();
        for (target, task) in self.tasks {
            let tally = task.await.expect("reader task");
            match by_target.iter_mut().find(|(t, _)| t.label == target.label) {
                Some((_, tallies)) => tallies.push(tally),
                None => by_target.push((target, vec![tally])),
            }
        }
        by_target
    }
}

/// One reader: the README's query alone, then the `Reader` (which waits
/// for a value due a moment after the stored one expired), in a loop;
/// WeChat's verdict at the moment of each read, and the README's recovery:
/// a rejected credential is reported, and the reader reads again until a
/// newer one is stored.
async fn read(s: Arc<Scenario>, reader: Reader, target: Target, done: Arc<AtomicBool>) -> Tally {
    let id = AccountId::new(&target.account);
    let collection = s.db.db().collection::<Document>(target.kind.collection());
    let mut tally = Tally::default();
    let mut reported: Option<(Generation, Instant)> = None;
    while !done.load(Ordering::Relaxed) {
        let wall = SystemTime::now();
        let query = doc! {
            "app_id": id.as_str(),
            "expires_at": { "$gt": mongodb::bson::DateTime::from_system_time(wall) },
        };
        let raw = collection
            .find_one(query)
            .sort(doc! { "generation": -1 })
            .await
            .expect("the README's query");
        if raw.is_none() {
            tally.raw_missing.push(wall);
        }
        let (at, wall) = (Instant::now(), SystemTime::now());
        tally.taken += 1;
        match reader.latest_of(target.kind, &id).await {
            Err(ReadError::Expired { .. } | ReadError::NotFound { .. }) => tally.missing.push(wall),
            Err(_) => tally.errors += 1,
            Ok(c) if reported.is_some_and(|(g, _)| c.generation <= g) => tally.waiting += 1,
            Ok(c) if s.fake.is_accepted_at(c.secret(), at) => {
                if let Some((_, since)) = reported.take() {
                    tally.recoveries.push(since.elapsed());
                }
            }
            Ok(c) => {
                tally.rejected.push(c.generation.0);
                reader.report_invalid(&c).await.expect("report");
                reported = Some((c.generation, at));
            }
        }
        tokio::time::sleep(SAMPLE_PAUSE).await;
    }
    tally
}

/// The stored documents of a target, oldest generation first.
async fn stored(s: &Scenario, target: &Target) -> Vec<Document> {
    s.db.try_find(
        target.kind.collection(),
        doc! { "app_id": target.account.as_str() },
    )
    .await
    .expect("read the history")
}

/// Waits until every target has at least `n` stored values.
async fn wait_for_values(s: &Scenario, targets: &[Target], n: usize) {
    for target in targets {
        eventually(WAIT, &format!("{n} values of {}", target.label), || async {
            (stored(s, target).await.len() >= n).then_some(())
        })
        .await;
    }
}

/// What the stored history says of one target.
struct History {
    values: usize,
    /// The most calls WeChat answered with one value (its issue and every
    /// repeat): the calls of one refresh cycle.
    max_answers: u32,
    /// The longest a missing sample came after the stored expiry before it.
    longest_edge_wait: Duration,
}

/// Checks the stored history of `target` against WeChat's: each value is
/// stored once, its `expires_at` never later than WeChat's expiry of it
/// (a repeat never moved it); and places every missing sample after a
/// stored expiry.
async fn check_history(s: &Scenario, target: &Target, missing: &[SystemTime]) -> History {
    let docs = stored(s, target).await;
    let field = target.kind.value_field();
    let mut values: Vec<&str> = Vec::new();
    let mut expiries = Vec::new();
    let mut max_answers = 0;
    for d in &docs {
        let value = d.get_str(field).expect("value");
        let generation = d.get_i64("generation").expect("generation");
        assert!(
            !values.contains(&value),
            "{}: generation {generation} stores a value again",
            target.label
        );
        values.push(value);
        let expires_at = d
            .get_datetime("expires_at")
            .expect("expires_at")
            .to_system_time();
        let (_, wechat_expiry) = s.fake.lifetime_of(value).expect("issued by the fake");
        assert!(
            expires_at <= wechat_expiry + CLOCK_TOLERANCE,
            "{}: generation {generation} is stored as living {:?} past WeChat's expiry",
            target.label,
            expires_at.duration_since(wechat_expiry).unwrap_or_default()
        );
        expiries.push(expires_at);
        max_answers = max_answers.max(s.fake.answers_of(value));
    }
    let mut longest_edge_wait = Duration::ZERO;
    for at in missing {
        let since = expiries
            .iter()
            .filter(|e| *e <= at)
            .max()
            .and_then(|e| at.duration_since(*e).ok())
            .unwrap_or_else(|| panic!("{}: nothing stored before a missing sample", target.label));
        longest_edge_wait = longest_edge_wait.max(since);
    }
    History {
        values: docs.len(),
        max_answers,
        longest_edge_wait,
    }
}

/// The most calls a value gets while WeChat repeats it, margin `m`: the
/// daemon's documented ⌊log2(m / 1 s)⌋ + 2 until the earliest known expiry,
/// one at the stored expiry (a counted-down answer, rounded down, puts the
/// former up to a second early), and at most five past it, 25–50 ms apart
/// and doubling (over 0.75 s of WeChat's latency; one when idle).
fn calls_per_value_bound(margin: Duration) -> u32 {
    (margin.as_secs_f64().log2().floor() as u32) + 2 + 1 + 5
}

/// Following the README's recovery, a reader is rejected each token at most
/// once: it reports it and reads again until a newer one is stored.
fn assert_each_token_rejected_at_most_once_per_reader(readers: &[Tally]) {
    for (i, reader) in readers.iter().enumerate() {
        let mut generations = reader.rejected.clone();
        generations.dedup();
        assert_eq!(
            generations.len(),
            reader.rejected.len(),
            "reader {i} was rejected the same token twice: {:?}",
            reader.rejected
        );
    }
}

fn report(target: &Target, tally: &Tally, history: &History) {
    eprintln!(
        "modes: {}: {} samples; Reader: {} without a valid credential ({} missing, {} rejected, \
         {} waiting after a report; {} failed reads); the query alone: {} missing, the \
         longest {} ms past a stored expiry; {} values, at most {} calls answered with one",
        target.label,
        tally.taken,
        tally.missing.len() as u64 + tally.rejected.len() as u64 + tally.waiting,
        tally.missing.len(),
        tally.rejected.len(),
        tally.waiting,
        tally.errors,
        tally.raw_missing.len(),
        history.longest_edge_wait.as_millis(),
        history.values,
        history.max_answers,
    );
}

/// Runs the readers while every target stores `values` values, then checks
/// and prints each target: `edge` says whether readers may miss a value
/// after a stored expiry (upstreams that repeat a value until it dies).
async fn run_and_check(
    s: &Arc<Scenario>,
    targets: &[Target],
    values: usize,
    margin: Duration,
    edge: bool,
) {
    wait_for_values(s, targets, 1).await;
    let readers = Readers::start(s, targets, 1).await;
    wait_for_values(s, targets, values).await;
    for (target, tallies) in readers.stop().await {
        let tally = Tally::sum(&tallies);
        let history = check_history(s, &target, &tally.raw_missing).await;
        report(&target, &tally, &history);
        assert!(tally.taken > 100, "{}: too few samples", target.label);
        assert_eq!(
            tally.rejected,
            Vec::<i64>::new(),
            "{}: rejected",
            target.label
        );
        // The `Reader` is never without a valid credential.
        assert_eq!(tally.missing.len(), 0, "{}: missing", target.label);
        // The README's query alone finds nothing only for about a call
        // after a stored expiry, where WeChat repeats a value until it dies.
        if edge {
            assert!(
                history.longest_edge_wait <= EDGE_BOUND,
                "{}: the query found nothing {:?} after a stored expiry",
                target.label,
                history.longest_edge_wait
            );
        } else {
            assert_eq!(tally.raw_missing.len(), 0, "{}: missing", target.label);
        }
        let bound = calls_per_value_bound(margin);
        assert!(
            history.max_answers <= bound,
            "{}: {} calls answered with one value (bound {bound})",
            target.label,
            history.max_answers
        );
    }
}

/// No answer was refused (a refused repeat would be retried with backoff,
/// and readers would wait for it).
async fn assert_nothing_refused(s: &Scenario, targets: &[Target]) {
    let m = s.daemon().metrics().await;
    for target in targets {
        let labels = [
            ("account", target.account.as_str()),
            ("kind", target.kind.as_str()),
            ("outcome", "transient"),
        ];
        let refused = m.get("wxtokend_refresh_total", &labels).unwrap_or(0.0);
        assert_eq!(refused, 0.0, "{}: an answer was refused", target.label);
    }
}

/// `/cgi-bin/token` issues a new token every call (the old one works for
/// its overlap), a ticket endpoint made to do the same, and stable_token's
/// own way (the same token counting down, a new one in its last window,
/// the old one valid to its end): readers always have a valid credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_overlap_leave_readers_no_moment_without_a_credential() {
    let oa = TestAccount::new("wx00000000modes0001", "modes-secret-0001").tickets(&["jsapi"]);
    let stable =
        TestAccount::new("wx00000000modes0002", "modes-secret-0002").endpoint("stable_token");
    let margin = Duration::from_secs(2);
    let s = Arc::new(
        Scenario::new()
            .account(oa.clone())
            .account(stable.clone())
            .app_for(&oa.id, |app| {
                app.expires_in(Duration::from_secs(4))
                    .overlap(Duration::from_secs(3))
                    .ticket_expires_in(Duration::from_secs(4))
                    .mode(Endpoint::GetTicket, Mode::NewEveryCall)
            })
            .app_for(&stable.id, |app| {
                app.expires_in(Duration::from_secs(5))
                    .stable_window(Duration::from_millis(1500))
            })
            .config(|c| {
                c.margin = "2s";
                c.forced_min_interval = "30s";
            })
            .build()
            .await,
    );
    let targets = [
        Target::new("token NewEveryCall", &oa, CredentialKind::AccessToken),
        Target::new("getticket NewEveryCall", &oa, CredentialKind::JsapiTicket),
        Target::new("stable_token Stable", &stable, CredentialKind::AccessToken),
    ];
    run_and_check(&s, &targets, 4, margin, false).await;
    // One call per value where every call issues one.
    let tokens = s.fake.issued_on(&oa.id, Endpoint::Token).len() as u32;
    assert_eq!(s.fake.calls(&oa.id, Endpoint::Token), tokens);
    assert_eq!(s.fake.stable_calls(&stable.id).1, 0, "force_refresh sent");
}

/// `getticket` as developers report it (the same ticket while it is valid,
/// always with the full `expires_in`), and a token endpoint made to do the
/// same: a repeat never moves the stored expiry, and the next value is
/// stored within a call of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_repeated_with_a_full_expires_in_keep_their_first_expiry() {
    let token = TestAccount::new("wx00000000modes0011", "modes-secret-0011");
    let tickets =
        TestAccount::new("wx00000000modes0012", "modes-secret-0012").tickets(&["jsapi", "wx_card"]);
    // Tries at 2.2 s and 1.1 s left, then at the expiry itself (a retry a
    // second after the one at 1.1 s would leave readers 0.9 s without).
    let margin = Duration::from_millis(2200);
    let s = Arc::new(
        Scenario::new()
            .account(token.clone())
            .account(tickets.clone())
            .app_for(&token.id, |app| {
                app.expires_in(Duration::from_secs(5))
                    .mode(Endpoint::Token, Mode::SameWhileValid)
            })
            .app_for(&tickets.id, |app| {
                // getticket's default mode: SameWhileValid.
                app.ticket_expires_in(Duration::from_secs(5))
            })
            .config(|c| c.margin = "2200ms")
            .build()
            .await,
    );
    let targets = [
        Target::new("token SameWhileValid", &token, CredentialKind::AccessToken),
        Target::new(
            "getticket SameWhileValid (jsapi)",
            &tickets,
            CredentialKind::JsapiTicket,
        ),
        Target::new(
            "getticket SameWhileValid (wx_card)",
            &tickets,
            CredentialKind::WxCardTicket,
        ),
    ];
    run_and_check(&s, &targets, 4, margin, true).await;
    assert_nothing_refused(&s, &targets).await;
}

/// WeCom (token and tickets) and the other endpoints made to do the same:
/// the same value while valid, with its time left as `expires_in`, down to
/// 0 in its last second. With `wechat.min_expires_in` above the last
/// answers, those repeats are still accepted (the floor judges new values
/// only), so nothing is refused and no backoff delays the next value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_repeated_counting_down_are_followed_by_the_next_within_a_call() {
    let token = TestAccount::new("wx00000000modes0021", "modes-secret-0021");
    let ticket = TestAccount::new("wx00000000modes0022", "modes-secret-0022").tickets(&["jsapi"]);
    let wecom =
        TestAccount::new("ww0000000modescorp1/1000002", "modes-secret-0023").platform("wecom");
    let wecom_tickets = TestAccount::new("ww0000000modescorp2/1000003", "modes-secret-0024")
        .platform("wecom")
        .tickets(&["jsapi", "agent_config"]);
    let counting = Mode::SameWhileValidCountingDown;
    let life = Duration::from_secs(5);
    // Tries at 2.2 s and 1.1 s left, then at the expiry itself (a retry a
    // second after the one at 1.1 s would leave readers 0.9 s without).
    let margin = Duration::from_millis(2200);
    let s = Arc::new(
        Scenario::new()
            .account(token.clone())
            .account(ticket.clone())
            .account(wecom.clone())
            .account(wecom_tickets.clone())
            .app_for(&token.id, move |app| {
                app.expires_in(life).mode(Endpoint::Token, counting)
            })
            .app_for(&ticket.id, move |app| {
                app.ticket_expires_in(life)
                    .mode(Endpoint::GetTicket, counting)
            })
            // WeCom's default mode: SameWhileValidCountingDown.
            .app_for(&wecom.id, move |app| app.expires_in(life))
            .app_for(&wecom_tickets.id, move |app| app.ticket_expires_in(life))
            .config(|c| {
                c.margin = "2200ms";
                c.min_expires_in = "3s";
            })
            .build()
            .await,
    );
    let targets = [
        Target::new(
            "token SameWhileValidCountingDown",
            &token,
            CredentialKind::AccessToken,
        ),
        Target::new(
            "getticket SameWhileValidCountingDown",
            &ticket,
            CredentialKind::JsapiTicket,
        ),
        Target::new(
            "WeCom gettoken SameWhileValidCountingDown",
            &wecom,
            CredentialKind::AccessToken,
        ),
        Target::new(
            "WeCom get_jsapi_ticket SameWhileValidCountingDown",
            &wecom_tickets,
            CredentialKind::JsapiTicket,
        ),
        Target::new(
            "WeCom agent_config ticket SameWhileValidCountingDown",
            &wecom_tickets,
            CredentialKind::AgentConfigTicket,
        ),
    ];
    run_and_check(&s, &targets, 4, margin, true).await;
    assert_nothing_refused(&s, &targets).await;
}

/// WeCom kills a token early (here: every token, 3 s into its 8 s life).
/// Readers following the README's recovery (report 40014/42001, read again)
/// see each dead token rejected at most once and a new one within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wecom_early_invalidation_costs_each_reader_at_most_one_rejection_per_token() {
    let wecom =
        TestAccount::new("ww0000000modescorp3/1000004", "modes-secret-0031").platform("wecom");
    let s = Arc::new(
        Scenario::new()
            .account(wecom.clone())
            .app(|app| {
                app.expires_in(Duration::from_secs(8))
                    .early_invalidation(Endpoint::WecomToken, Duration::from_secs(3))
            })
            .config(|c| c.margin = "2s")
            .build()
            .await,
    );
    let target = Target::new(
        "WeCom gettoken with early invalidation",
        &wecom,
        CredentialKind::AccessToken,
    );
    let targets = [target.clone()];
    wait_for_values(&s, &targets, 1).await;
    let readers = Readers::start(&s, &targets, 2).await;
    wait_for_values(&s, &targets, 5).await;
    let (_, each) = readers.stop().await.pop().expect("one target");
    let tally = Tally::sum(&each);
    let history = check_history(&s, &target, &tally.raw_missing).await;
    report(&target, &tally, &history);
    let recovery = tally.recoveries.iter().max().copied().unwrap_or_default();
    let killed = s
        .fake
        .issued_on(&wecom.id, Endpoint::WecomToken)
        .iter()
        .filter(|t| s.fake.is_rotated_away(t))
        .count();
    eprintln!(
        "modes: {}: {killed} tokens killed early, {} recoveries, the longest {} ms",
        target.label,
        tally.recoveries.len(),
        recovery.as_millis()
    );
    assert!(
        killed >= 3,
        "too few invalidations to mean anything: {killed}"
    );
    assert_eq!(tally.missing.len(), 0, "readers found no token");
    assert_eq!(tally.raw_missing.len(), 0, "the query found no token");
    assert_each_token_rejected_at_most_once_per_reader(&each);
    for (i, reader) in each.iter().enumerate() {
        assert!(
            reader.rejected.len() <= killed,
            "reader {i}: {:?}",
            reader.rejected
        );
    }
    assert!(recovery <= RECOVERY_BOUND, "recovery took {recovery:?}");
    // The daemon replaced each dead token on report, not on its schedule.
    let docs = stored(&s, &target).await;
    assert!(docs[1..]
        .iter()
        .all(|d| d.get_str("reason") == Ok("reported_invalid")));
}

/// stable_token: someone else forces a refresh (the stored token dies at
/// once); readers report it, and a plain request gets WeChat's new token,
/// spending no forced refresh. Then a token is reported that WeChat still
/// answers: only then is force_refresh sent, which kills it at once. Readers
/// are never rejected a token other than one reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_token_forces_only_a_reported_token_wechat_still_answers() {
    let stable =
        TestAccount::new("wx00000000modes0041", "modes-secret-0041").endpoint("stable_token");
    let s = Arc::new(
        Scenario::new()
            .account(stable.clone())
            .app(|app| {
                app.expires_in(Duration::from_secs(120))
                    .stable_window(Duration::from_secs(5))
            })
            .config(|c| c.forced_min_interval = "30s")
            .build()
            .await,
    );
    let target = Target::new(
        "stable_token forced refresh, no overlap",
        &stable,
        CredentialKind::AccessToken,
    );
    let targets = [target.clone()];
    wait_for_values(&s, &targets, 1).await;
    let readers = Readers::start(&s, &targets, 2).await;

    // Another holder of the secret forces a refresh.
    let forced = reqwest::Client::new()
        .post(format!("{}/cgi-bin/stable_token", s.fake.url()))
        .json(&serde_json::json!({
            "grant_type": "client_credential",
            "appid": stable.id,
            "secret": stable.secret,
            "force_refresh": true,
        }))
        .send()
        .await
        .expect("force from elsewhere");
    assert!(forced.status().is_success());
    let docs = eventually(RECOVERY_BOUND, "the replacement stored", || async {
        let docs = stored(&s, &target).await;
        (docs.len() == 2).then_some(docs)
    })
    .await;
    let issued = s.fake.issued_on(&stable.id, Endpoint::StableToken);
    assert!(
        docs[1].get_str("access_token") == Ok(issued[1].as_str()),
        "generation 2 is not the token WeChat issued to the other caller"
    );
    assert_eq!(docs[1].get_str("reason"), Ok("reported_invalid"));
    assert_eq!(
        s.fake.stable_calls(&stable.id).1,
        1,
        "the daemon forced a refresh"
    );

    // A report of a token WeChat still answers: forced, once.
    let current = s.reader.latest(&s.account_id()).await.expect("a token");
    assert_eq!(current.generation, Generation(2));
    s.reader.report_invalid(&current).await.expect("report");
    // At once: a plain request is not spaced from the forced one.
    eventually(RECOVERY_BOUND, "the forced replacement stored", || async {
        (stored(&s, &target).await.len() == 3).then_some(())
    })
    .await;
    assert_eq!(s.fake.stable_calls(&stable.id).1, 2, "force_refresh calls");
    // Readers catch up with the new token before they stop.
    eventually(WAIT, "an accepted third token", || async {
        let token = s.reader.latest(&s.account_id()).await.ok()?;
        (token.generation == Generation(3) && s.fake.is_accepted(token.secret())).then_some(())
    })
    .await;
    s.wait_for_renewals(&stable.id, 2).await;
    let (_, each) = readers.stop().await.pop().expect("one target");
    let tally = Tally::sum(&each);
    let history = check_history(&s, &target, &tally.raw_missing).await;
    report(&target, &tally, &history);
    assert_eq!(tally.missing.len(), 0, "readers found no token");
    assert_eq!(tally.raw_missing.len(), 0, "the query found no token");
    assert!(
        tally.rejected.iter().all(|g| *g == 1 || *g == 2),
        "a token nobody reported was rejected: {:?}",
        tally.rejected
    );
    assert_each_token_rejected_at_most_once_per_reader(&each);
    let (code, out, err) = s.run(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(status[0]["forced_calls_today"], 1, "{status}");
}

/// WeChat counts quotas per API: a `getticket` answering 45009 stops that
/// ticket of the account for its quota day, and nothing else. Over a
/// time-compressed day (a 7200 s token is refreshed about a dozen times a
/// day; here one lives 2 s), the access token keeps being refreshed and
/// readers always have one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_getticket_45009_stops_that_ticket_only_while_the_token_refreshes_all_day() {
    const A_DAY: usize = 13;
    let account = TestAccount::new("wx00000000modes0051", "modes-secret-0051").tickets(&["jsapi"]);
    let id = account.id.clone();
    let s = Arc::new(
        Scenario::new()
            .account(account.clone())
            .app_for(&id, |app| {
                app.expires_in(Duration::from_secs(2))
                    .quota(Endpoint::GetTicket, 0)
            })
            .config(|c| c.margin = "1s")
            .build()
            .await,
    );
    let token = Target::new(
        "token while getticket answers 45009",
        &account,
        CredentialKind::AccessToken,
    );
    let targets = [token.clone()];
    wait_for_values(&s, &targets, 1).await;
    let readers = Readers::start(&s, &targets, 1).await;
    wait_for_values(&s, &targets, A_DAY + 1).await;
    let (_, tallies) = readers.stop().await.remove(0);
    let tally = Tally::sum(&tallies);
    let history = check_history(&s, &token, &tally.raw_missing).await;
    report(&token, &tally, &history);
    assert!(tally.taken > 100, "too few samples");
    assert_eq!(tally.missing.len(), 0, "readers found no token");
    assert_eq!(tally.raw_missing.len(), 0, "the query found no token");
    assert_eq!(tally.rejected, Vec::<i64>::new(), "rejected");

    // getticket was asked once, answered 45009, and never asked again;
    // nothing was stored for it.
    assert_eq!(s.fake.calls(&id, Endpoint::GetTicket), 1);
    assert!(stored(
        &s,
        &Target::new("jsapi", &account, CredentialKind::JsapiTicket)
    )
    .await
    .is_empty());
    // The stop is the ticket's alone, in MongoDB, /metrics and status.
    let lease = s.lease(&id).await.expect("lease");
    assert!(lease.exhausted(Api::JsapiTicket), "{lease:?}");
    assert!(!lease.exhausted(Api::Token), "{lease:?}");
    assert_eq!(lease.calls_today(Api::JsapiTicket), 1, "{lease:?}");
    assert!(lease.calls_today(Api::Token) > A_DAY as i64, "{lease:?}");
    let m = s.daemon().metrics().await;
    let stopped = |api| m.quota("wxtokend_quota_exhausted", &id, api);
    assert_eq!(stopped("jsapi_ticket"), Some(1.0));
    assert_eq!(stopped("token"), None);
    let (code, out, err) = s.run(&["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    let line = |kind: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == kind)
            .unwrap_or_else(|| panic!("a {kind} line: {out}"))
            .clone()
    };
    let (ticket, token) = (line("jsapi_ticket"), line("access_token"));
    assert_eq!(ticket["api"], "jsapi_ticket", "{ticket}");
    assert_eq!(ticket["quota_exhausted"], true, "{ticket}");
    assert_eq!(ticket["calls_today"], 1, "{ticket}");
    assert_eq!(token["api"], "token", "{token}");
    assert_eq!(token["quota_exhausted"], false, "{token}");
    s.daemon().assert_logs_free_of(&s.secrets());
}
