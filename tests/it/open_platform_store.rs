//! The Open Platform's authorizer directory (`authorizers`) and sealed
//! secrets (`authorizer_secrets`) against the test MongoDB, driven through
//! the daemon's own store types: the refresh token's compare-and-swap, the
//! event-time guards that stop replays, and sealing at rest.

use std::time::{Duration, SystemTime};

use mongodb::bson::{doc, Bson, Document};
use secrecy::{ExposeSecret, SecretString};
use wxtokend::coordination::Term;
use wxtokend::open_platform::directory::{
    Authorization, AuthorizerState, Directory, Discovered, EventOutcome, StateSet, AUTHORIZERS,
};
use wxtokend::open_platform::secretbox::Key;
use wxtokend::open_platform::secrets::{Cas, Secrets, Source, Version, AUTHORIZER_SECRETS};
use wxtokend::open_platform::{SecretBox, Unsealable};
use wxtokend_reader::AccountId;

use crate::support::mongo::TestDb;
use crate::support::store::daemon_store;

const REFRESH_TOKEN: &str = "refreshtoken@@@first-never-stored-in-clear";
const CODE: &str = "queryauthcode@@@never-stored-in-clear";

fn component() -> AccountId {
    AccountId::new("wxcomponent00000001")
}

fn authorizer(n: u32) -> AccountId {
    AccountId::new(format!("wxauthorizer{n:07}"))
}

fn secret_box(byte: u8) -> SecretBox {
    SecretBox::new(Key::new([byte; 32]).expect("key"), None)
}

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

/// A time `s` seconds after a fixed instant, as WeChat's `CreateTime`s are
/// (whole seconds).
fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_760_000_000 + s)
}

async fn setup() -> (TestDb, Directory, Secrets) {
    let db = TestDb::new().await;
    let store = daemon_store(&db).await;
    store
        .ensure_indexes(&wxtokend::open_platform::store::indexes())
        .await
        .expect("the platform's indexes");
    let directory = Directory::new(store.clone());
    let secrets = Secrets::new(store, secret_box(7), "test-instance");
    (db, directory, secrets)
}

async fn state(directory: &Directory, n: u32) -> AuthorizerState {
    directory
        .get(&component(), &authorizer(n))
        .await
        .expect("read")
        .expect("known")
        .state
}

#[tokio::test]
async fn a_refresh_token_write_loses_to_a_newer_version() {
    let (_db, _, secrets) = setup().await;
    let (c, a) = (component(), authorizer(1));
    let read = secrets.read(&c, &a).await.expect("read");
    assert_eq!(read.version, Version::NONE);
    assert!(read.refresh_token.is_none() && read.code.is_none());

    let replace = |expected, token: &'static str| {
        let secrets = secrets.clone();
        let (c, a) = (c.clone(), a.clone());
        async move {
            secrets
                .replace_refresh_token(&c, &a, expected, &secret(token), Source::QueryAuth, None)
                .await
                .expect("written or lost")
        }
    };
    assert_eq!(replace(Version::NONE, "rt-1").await, Cas::Won(Version(1)));
    // A second first writer (discovery racing an exchange) loses.
    assert_eq!(replace(Version::NONE, "rt-stale").await, Cas::Lost);
    assert_eq!(replace(Version(1), "rt-2").await, Cas::Won(Version(2)));
    // A holder that read version 1 before its call: someone wrote since.
    assert_eq!(replace(Version(1), "rt-stale").await, Cas::Lost);
    let read = secrets.read(&c, &a).await.expect("read");
    assert_eq!(read.version, Version(2));
    let stored = read.refresh_token.expect("stored").expect("opens");
    assert_eq!(stored.expose_secret(), "rt-2");

    // Forgetting (61003) bumps the version: a write in flight loses.
    assert_eq!(
        secrets.forget(&c, &a, None).await.expect("forget"),
        EventOutcome::Applied
    );
    assert_eq!(replace(Version(2), "rt-after-withdrawal").await, Cas::Lost);
    let read = secrets.read(&c, &a).await.expect("read");
    assert_eq!(read.version, Version(3));
    assert!(read.refresh_token.is_none());
}

/// Across a lease handover, the refresh token WeChat issued last is kept,
/// whatever order the writes land in: a former holder (term 5) stores what
/// its call rotated after the new holder (term 6) read the version, and the
/// new holder's value (issued later: it calls only under its own lease)
/// still replaces it; the former holder's write landing last loses. A value
/// discovery wrote, or a withdrawal, is never replaced that way.
#[tokio::test]
async fn a_rotated_refresh_token_from_a_newer_lease_term_wins_over_a_former_holders() {
    let (_db, _, secrets) = setup().await;
    let (c, a) = (component(), authorizer(5));
    let replace = |expected, token: &'static str, term: Option<i64>| {
        let secrets = secrets.clone();
        let (c, a) = (c.clone(), a.clone());
        async move {
            secrets
                .replace_refresh_token(
                    &c,
                    &a,
                    expected,
                    &secret(token),
                    Source::AuthorizerToken,
                    term.map(Term),
                )
                .await
                .expect("written or lost")
        }
    };
    let stored = || async {
        let read = secrets.read(&c, &a).await.expect("read");
        let token = read.refresh_token.expect("stored").expect("opens");
        (read.version, token.expose_secret().to_owned())
    };
    assert_eq!(
        replace(Version::NONE, "rt-1", Some(5)).await,
        Cas::Won(Version(1))
    );
    // Both holders read version 1 before their calls; the former one's
    // (issued first) lands first, the new holder's still replaces it.
    assert_eq!(
        replace(Version(1), "rt-2-former", Some(5)).await,
        Cas::Won(Version(2))
    );
    assert_eq!(
        replace(Version(1), "rt-3-new", Some(6)).await,
        Cas::Won(Version(3))
    );
    assert_eq!(stored().await, (Version(3), "rt-3-new".to_owned()));
    // The former holder's value landing after the new holder's loses.
    assert_eq!(replace(Version(1), "rt-2-late", Some(5)).await, Cas::Lost);
    // So does one of the same term that read an older version.
    assert_eq!(
        replace(Version(2), "rt-same-term", Some(6)).await,
        Cas::Lost
    );
    assert_eq!(stored().await, (Version(3), "rt-3-new".to_owned()));

    // Discovery's write (no term) is never replaced by a holder that read
    // before it, whatever its term.
    assert_eq!(
        replace(Version(3), "rt-listed", None).await,
        Cas::Won(Version(4))
    );
    assert_eq!(replace(Version(3), "rt-stale", Some(9)).await, Cas::Lost);
    assert_eq!(stored().await, (Version(4), "rt-listed".to_owned()));

    // Nor is a withdrawal (61003 or the event): the token stays forgotten.
    assert_eq!(
        replace(Version(4), "rt-7", Some(7)).await,
        Cas::Won(Version(5))
    );
    secrets.forget(&c, &a, None).await.expect("forget");
    assert_eq!(
        replace(Version(5), "rt-after-withdrawal", Some(8)).await,
        Cas::Lost
    );
    let read = secrets.read(&c, &a).await.expect("read");
    assert!(read.refresh_token.is_none(), "forgotten stays forgotten");
}

#[tokio::test]
async fn a_replayed_unauthorized_after_a_later_authorized_changes_nothing() {
    let (db, directory, secrets) = setup().await;
    let (c, a) = (component(), authorizer(2));
    let event = |authorization, t| {
        let directory = directory.clone();
        let (c, a) = (c.clone(), a.clone());
        async move {
            directory
                .upsert(&c, &a, authorization, t)
                .await
                .expect("upsert")
        }
    };
    assert_eq!(
        event(Authorization::Authorized, at(10)).await,
        EventOutcome::Applied
    );
    assert_eq!(state(&directory, 2).await, AuthorizerState::Pending);
    assert_eq!(
        event(Authorization::Unauthorized, at(20)).await,
        EventOutcome::Applied
    );
    assert_eq!(state(&directory, 2).await, AuthorizerState::Unauthorized);
    // The holder cannot bring it back: only a newer event does.
    let set = directory
        .set_state(&c, &a, AuthorizerState::Active, "exchanged")
        .await
        .expect("set");
    assert_eq!(set, StateSet::Kept);
    assert_eq!(
        event(Authorization::Authorized, at(30)).await,
        EventOutcome::Applied
    );
    assert_eq!(state(&directory, 2).await, AuthorizerState::Pending);
    // Replays of the earlier events, and a re-delivery of the last one.
    for (authorization, t) in [
        (Authorization::Unauthorized, at(20)),
        (Authorization::Authorized, at(10)),
        (Authorization::Authorized, at(30)),
    ] {
        assert_eq!(event(authorization, t).await, EventOutcome::Superseded);
    }
    let known = directory.get(&c, &a).await.expect("read").expect("known");
    assert_eq!(known.state, AuthorizerState::Pending);
    assert_eq!(known.event_time, Some(at(30)));
    assert_eq!(known.state_reason, "event:authorized");
    assert_eq!(db.count(AUTHORIZERS).await, 1);

    // An active authorizer stays active on updateauthorized.
    let set = directory
        .set_state(&c, &a, AuthorizerState::Active, "exchanged")
        .await
        .expect("set");
    assert_eq!(set, StateSet::Set);
    assert_eq!(
        event(Authorization::UpdateAuthorized, at(40)).await,
        EventOutcome::Applied
    );
    assert_eq!(state(&directory, 2).await, AuthorizerState::Active);

    // A refused refresh token (61023) is noted once: a retry that is
    // refused again leaves `updated_at`, which says when it was first
    // refused (discovery's early pass looks for that).
    let refused = || {
        directory.set_state_as_of(
            &c,
            &a,
            AuthorizerState::NeedsReauthorization,
            "errcode:61023",
            SystemTime::now(),
        )
    };
    assert_eq!(refused().await.expect("set"), StateSet::Set);
    let first = directory.get(&c, &a).await.expect("read").expect("known");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(refused().await.expect("set"), StateSet::Kept);
    let again = directory.get(&c, &a).await.expect("read").expect("known");
    assert_eq!(again.updated_at, first.updated_at);
    directory
        .set_state(&c, &a, AuthorizerState::Active, "list")
        .await
        .expect("repaired");

    // The secrets follow the same clock: an older code, or a replayed
    // withdrawal, changes nothing.
    let set_code = |code: &'static str, t| {
        let secrets = secrets.clone();
        let (c, a) = (c.clone(), a.clone());
        async move {
            secrets
                .set_code(&c, &a, &secret(code), t + Duration::from_secs(3600), t)
                .await
                .expect("set_code")
        }
    };
    assert_eq!(set_code("code-30", at(30)).await, EventOutcome::Applied);
    assert_eq!(set_code("code-10", at(10)).await, EventOutcome::Superseded);
    assert_eq!(
        secrets.forget(&c, &a, Some(at(20))).await.expect("forget"),
        EventOutcome::Superseded
    );
    let read = secrets.read(&c, &a).await.expect("read");
    let code = read.code.expect("kept");
    assert_eq!(code.code.expect("opens").expose_secret(), "code-30");
    assert_eq!(code.event_time, at(30));
    assert_eq!(code.expires_at, at(30) + Duration::from_secs(3600));
    // Clearing names the code: a newer one is not cleared by mistake.
    assert_eq!(set_code("code-40", at(40)).await, EventOutcome::Applied);
    assert!(!secrets.clear_code(&c, &a, at(30)).await.expect("clear"));
    assert!(secrets.clear_code(&c, &a, at(40)).await.expect("clear"));
    assert!(secrets.read(&c, &a).await.expect("read").code.is_none());
    // A replayed code after it was exchanged is refused too.
    assert_eq!(set_code("code-40", at(40)).await, EventOutcome::Superseded);
    // A newer withdrawal forgets everything.
    assert_eq!(
        secrets.forget(&c, &a, Some(at(50))).await.expect("forget"),
        EventOutcome::Applied
    );
    let read = secrets.read(&c, &a).await.expect("read");
    assert!(read.refresh_token.is_none() && read.code.is_none());
}

#[tokio::test]
async fn a_sealed_refresh_token_reads_back_and_the_raw_document_holds_no_plaintext() {
    let (db, _, secrets) = setup().await;
    let c = component();
    let (a, b) = (authorizer(3), authorizer(4));
    let won = secrets
        .replace_refresh_token(
            &c,
            &a,
            Version::NONE,
            &secret(REFRESH_TOKEN),
            Source::AuthorizerList,
            None,
        )
        .await
        .expect("write");
    assert_eq!(won, Cas::Won(Version(1)));
    secrets
        .set_code(&c, &a, &secret(CODE), at(3600), at(0))
        .await
        .expect("set_code");
    let read = secrets.read(&c, &a).await.expect("read");
    let token = read.refresh_token.expect("stored").expect("opens");
    assert_eq!(token.expose_secret(), REFRESH_TOKEN);
    let code = read.code.expect("stored").code.expect("opens");
    assert_eq!(code.expose_secret(), CODE);

    let raw = db.docs(AUTHORIZER_SECRETS).await;
    assert_eq!(raw.len(), 1);
    let document = &raw[0];
    let text = format!("{document:?}");
    for plaintext in [REFRESH_TOKEN, CODE, "never-stored-in-clear"] {
        assert!(!text.contains(plaintext), "{text}");
    }
    let sealed = document.get_document("refresh_token").expect("sealed");
    assert_eq!(sealed.get_binary_generic("nonce").expect("nonce").len(), 24);
    assert_eq!(
        sealed
            .get_binary_generic("ciphertext")
            .expect("ciphertext")
            .len(),
        REFRESH_TOKEN.len() + 16
    );
    assert_eq!(document.get_i64("version").ok(), Some(1));
    assert_eq!(document.get_str("source").ok(), Some("authorizer_list"));
    assert_eq!(document.get_str("updated_by").ok(), Some("test-instance"));

    // Copied into another authorizer's document, it does not open there.
    let copy = doc! {
        "_id": format!("{c}:{b}"),
        "component_appid": c.as_str(),
        "app_id": b.as_str(),
        "version": 1_i64,
        "refresh_token": Bson::Document(sealed.clone()),
    };
    db.db()
        .collection::<Document>(AUTHORIZER_SECRETS)
        .insert_one(copy)
        .await
        .expect("insert the copy");
    let moved = secrets.read(&c, &b).await.expect("read");
    assert!(
        matches!(moved.refresh_token, Some(Err(Unsealable::Refused { .. }))),
        "{moved:?}"
    );
    // Without its key (lost, rotated out), it is named as such.
    let other = Secrets::new(daemon_store(&db).await, secret_box(8), "other");
    let lost = other.read(&c, &a).await.expect("read");
    assert!(
        matches!(lost.refresh_token, Some(Err(Unsealable::UnknownKey { .. }))),
        "{lost:?}"
    );
}

#[tokio::test]
async fn discovery_adds_authorizers_and_revives_only_withdrawals_older_than_itself() {
    let (_db, directory, _) = setup().await;
    let c = component();
    let before = SystemTime::now() - Duration::from_secs(5);
    let listed = |n: u32, has_refresh_token: bool, started: SystemTime| {
        let directory = directory.clone();
        let c = c.clone();
        async move {
            directory
                .upsert_listed(&c, &authorizer(n), has_refresh_token, Some(at(1)), started)
                .await
                .expect("listed")
        }
    };
    let started = SystemTime::now();
    assert_eq!(
        listed(5, true, started).await,
        Discovered::New(AuthorizerState::Active)
    );
    assert_eq!(
        listed(6, false, started).await,
        Discovered::New(AuthorizerState::Pending)
    );
    assert_eq!(
        listed(5, true, started).await,
        Discovered::Known(AuthorizerState::Active)
    );

    // Withdrawn after the pass began: stays withdrawn. Before: back.
    for (n, withdrawn) in [
        (7, started + Duration::from_secs(60)),
        (8, started - Duration::from_secs(60)),
    ] {
        directory
            .upsert(&c, &authorizer(n), Authorization::Unauthorized, withdrawn)
            .await
            .expect("upsert");
    }
    assert_eq!(
        listed(7, true, started).await,
        Discovered::Known(AuthorizerState::Unauthorized)
    );
    assert_eq!(
        listed(8, true, started).await,
        Discovered::Revived(AuthorizerState::Active)
    );
    let revived = directory
        .get(&c, &authorizer(8))
        .await
        .expect("read")
        .expect("known");
    assert_eq!(revived.state_reason, "list");
    assert_eq!(revived.auth_time, Some(at(1)));

    // The coordinators' poll: everything, then only what changed.
    let all = directory.all(&c).await.expect("all");
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|a| a.component_appid == c));
    let changed = directory.changed_since(&c, before).await.expect("changed");
    assert_eq!(changed.len(), 4);
    let mark = SystemTime::now() + Duration::from_millis(5);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(directory
        .changed_since(&c, mark)
        .await
        .expect("changed")
        .is_empty());
    directory
        .set_state(
            &c,
            &authorizer(5),
            AuthorizerState::NeedsReauthorization,
            "errcode:61023",
        )
        .await
        .expect("set");
    let changed = directory.changed_since(&c, mark).await.expect("changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].app_id, authorizer(5));
    assert_eq!(changed[0].state, AuthorizerState::NeedsReauthorization);
    assert!(directory
        .all(&AccountId::new("wxothercomponent"))
        .await
        .expect("all")
        .is_empty());
}

/// WeChat pushes its current ticket every 10 minutes, one value for a
/// while: a value first pushed 13 hours ago and pushed again now is usable
/// for 12 hours from its last push, not expired since its first.
#[tokio::test]
async fn a_ticket_still_pushed_stays_usable_past_twelve_hours_from_its_first_push() {
    use wxtokend::open_platform::store::Tickets;
    let db = TestDb::new().await;
    let store = daemon_store(&db).await;
    let tickets = Tickets::new(store.clone());
    let component = "wxcomponent0000002";
    let now = store.clock().now();
    let ticket = SecretString::from("ticket@@@still-current".to_owned());
    let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
    tickets
        .insert(component, &ticket, hours_ago(13), "test")
        .await
        .expect("insert");
    assert!(
        tickets
            .newest_usable(component, now)
            .await
            .expect("read")
            .is_none(),
        "13 hours old: expired"
    );
    tickets
        .insert(component, &ticket, now - Duration::from_secs(5), "test")
        .await
        .expect("insert");
    let usable = tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .expect("pushed again: usable");
    assert_eq!(usable.ticket.expose_secret(), "ticket@@@still-current");
    assert!(usable.usable_until() > now + Duration::from_secs(11 * 3600));
}

/// WeChat refused a ticket as expired (61005): it and every ticket pushed
/// before it are never used again; the same value pushed again stays
/// refused; a new value is used.
#[tokio::test]
async fn an_expired_ticket_takes_the_older_ones_with_it_and_a_repeat_stays_refused() {
    use wxtokend::open_platform::store::Tickets;
    let db = TestDb::new().await;
    let store = daemon_store(&db).await;
    let tickets = Tickets::new(store.clone());
    let component = "wxcomponent0000001";
    let now = store.clock().now();
    let secret = |s: &str| SecretString::from(s.to_owned());
    let at = |ago: u64| now - Duration::from_secs(ago);
    tickets
        .insert(component, &secret("ticket@@@older"), at(30), "test")
        .await
        .expect("insert");
    tickets
        .insert(component, &secret("ticket@@@newer"), at(20), "test")
        .await
        .expect("insert");
    let newest = tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .expect("usable");
    assert_eq!(newest.ticket.expose_secret(), "ticket@@@newer");

    let marked = tickets
        .reject(component, &newest, true)
        .await
        .expect("reject");
    assert_eq!(marked, 2, "the older one with it");
    assert!(tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .is_none());

    // WeChat pushes the refused value again: still refused.
    tickets
        .insert(component, &secret("ticket@@@newer"), at(10), "test")
        .await
        .expect("insert");
    assert!(tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .is_none());

    // Invalid (61006), not expired: only that value goes.
    tickets
        .insert(component, &secret("ticket@@@next"), at(5), "test")
        .await
        .expect("insert");
    tickets
        .insert(component, &secret("ticket@@@garbage"), at(1), "test")
        .await
        .expect("insert");
    let garbage = tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .expect("usable");
    tickets
        .reject(component, &garbage, false)
        .await
        .expect("reject");
    let next = tickets
        .newest_usable(component, now)
        .await
        .expect("read")
        .expect("the one before it");
    assert_eq!(next.ticket.expose_secret(), "ticket@@@next");
}
