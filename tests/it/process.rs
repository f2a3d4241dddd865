//! The process as a service manager sees it: a daemon whose parts died
//! must exit non-zero (systemd's `Restart=on-failure`, Docker's restart
//! policy), not linger or exit 0. Faults are injected with `FAILPOINTS`
//! (the suite builds the daemon with the `failpoints` feature).

use crate::support::{Scenario, WAIT};

async fn exit_code_with(failpoint: &str) -> Option<i32> {
    let failpoint = failpoint.to_owned();
    let mut s = Scenario::new()
        .accounts(1)
        .config(move |c| c.env.push(("FAILPOINTS", failpoint)))
        .build()
        .await;
    s.daemon_mut().wait_exit(WAIT).code()
}

// Multi-threaded: `wait_exit` blocks its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_refresher_makes_the_process_exit_non_zero() {
    assert_eq!(exit_code_with("refresh-step=panic").await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_coordinator_makes_the_process_exit_non_zero() {
    assert_eq!(exit_code_with("coordinator-maintain=panic").await, Some(1));
}
