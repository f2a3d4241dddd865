//! One clock for expiry: a replica whose own clock is minutes off still
//! stamps what it stores with MongoDB's time, so readers with a correct
//! clock neither take an expired token for valid nor a valid one for
//! expired. The skew is real: libfaketime (Debian's `libfaketime`) under
//! the daemon's process.

use std::time::{Duration, SystemTime};

use crate::support::Scenario;

/// Where Debian puts libfaketime for multi-threaded programs.
const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

#[tokio::test]
async fn a_replica_five_minutes_behind_stamps_tokens_with_mongodbs_time() {
    let Some(libfaketime) = LIBFAKETIME
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
    else {
        // scripts/test.sh installs it and sets WXTOKEND_REQUIRE_FAKETIME.
        assert!(
            std::env::var_os("WXTOKEND_REQUIRE_FAKETIME").is_none(),
            "libfaketime is missing: apt-get install libfaketime"
        );
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install libfaketime)");
        return;
    };
    let s = Scenario::new()
        .accounts(1)
        .app(|app| app.expires_in(Duration::from_secs(600)))
        .config(|c| {
            c.env.push(("LD_PRELOAD", libfaketime.into()));
            c.env.push(("FAKETIME", "-5m".into()));
        })
        .build()
        .await;
    let docs = s.wait_for_tokens(1).await;
    let date = |name| docs[0].get_datetime(name).expect("a date").to_system_time();
    let (fetched_at, expires_at) = (date("fetched_at"), date("expires_at"));
    let now = SystemTime::now();
    let skew = now
        .duration_since(fetched_at)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(60),
        "fetched_at is {skew:?} away from the true time"
    );
    assert_eq!(
        expires_at.duration_since(fetched_at).ok(),
        Some(Duration::from_secs(600))
    );
    // The reader, on a correct clock, finds it valid with its true time left.
    let token = s.reader.latest(&s.account_id()).await.expect("valid");
    let left = token.time_left(now);
    assert!(left > Duration::from_secs(500), "{left:?}");
}
