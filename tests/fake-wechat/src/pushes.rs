//! WeChat's pushes to a component's callback URL (授权事件接收URL): verify
//! tickets every `every` (WeChat: 10 minutes) and authorization events as
//! they happen, encrypted and signed by [`crate::component`]'s sender, sent
//! in order by one task per component, round-robin over the targets (the
//! replicas' receivers). Only `200 success` counts as delivered; every push
//! is logged with its answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::component::{Answer, Component, Push};
use crate::platform::random;
use crate::{lock, Shared};

/// One push WeChat sent, and what it got back.
#[derive(Debug, Clone)]
pub struct PushLog {
    /// `component_verify_ticket`, `authorized`, `updateauthorized`,
    /// `unauthorized`.
    pub info_type: String,
    /// The URL it went to.
    pub target: String,
    /// The receiver's answer (status 0 and the error when it did not
    /// answer).
    pub answer: Answer,
}

impl PushLog {
    pub fn delivered(&self) -> bool {
        self.answer.delivered()
    }
}

/// A component's push state.
#[derive(Default)]
pub(crate) struct Pushes {
    /// Encrypts and signs as the component's settings say.
    sender: Option<Component>,
    targets: Vec<String>,
    next: usize,
    /// Timed ticket pushes are off (a test stopped them, or WeChat did
    /// until `api_start_push_ticket`).
    pub(crate) paused: bool,
    /// Whether timed pushes were started.
    pub(crate) timed: bool,
    /// A new ticket value every this many ticket pushes (else a repeat).
    pub(crate) new_ticket_every: u64,
    /// Pushes left that repeat the current ticket.
    repeats_left: u64,
    current_ticket: Option<String>,
    pub(crate) log: Vec<PushLog>,
    jobs: Option<mpsc::UnboundedSender<Job>>,
}

/// What the push task sends next.
enum Job {
    /// The current verify ticket (a new one when due).
    Ticket(Option<oneshot::Sender<PushLog>>),
    /// An event, built when it happened.
    Event(Push, &'static str),
}

impl Pushes {
    /// The sender, to build an event push with; `None` without targets.
    pub(crate) fn sender(&self) -> Option<&Component> {
        self.jobs.as_ref().and(self.sender.as_ref())
    }

    /// Queues `push` (an event of `info_type`) after what is queued.
    pub(crate) fn event(&self, push: Push, info_type: &'static str) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Event(push, info_type));
        }
    }

    /// Queues a verify ticket push; `done` hears how it went.
    fn ticket(&self, done: Option<oneshot::Sender<PushLog>>) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job::Ticket(done)).is_ok())
    }

    /// Asks for a ticket push now (`api_start_push_ticket`).
    pub(crate) fn ticket_now(&self) {
        self.ticket(None);
    }

    fn next_target(&mut self) -> String {
        let target = self.targets[self.next % self.targets.len()].clone();
        self.next += 1;
        target
    }

    /// The ticket to push now: a new value every `new_ticket_every` pushes.
    fn ticket_value(&mut self) -> String {
        match &self.current_ticket {
            Some(current) if self.repeats_left > 0 => {
                self.repeats_left -= 1;
                current.clone()
            }
            _ => {
                self.repeats_left = self.new_ticket_every.max(1) - 1;
                let value = random("ticket@@@fake-");
                self.current_ticket = Some(value.clone());
                value
            }
        }
    }
}

/// Points `component`'s pushes at `targets` (round-robin), encrypted with
/// `sender`; starts its push task (ended by `abort`).
pub(crate) fn set_targets(
    world: &Shared,
    component: &str,
    sender: Component,
    targets: Vec<String>,
) -> tokio::task::JoinHandle<()> {
    assert!(!targets.is_empty(), "fake WeChat: no push target");
    let (jobs, queue) = mpsc::unbounded_channel();
    {
        let mut world = lock(world);
        let pushes = &mut world.platform(component).pushes;
        pushes.sender = Some(sender);
        pushes.targets = targets;
        pushes.jobs = Some(jobs);
    }
    tokio::spawn(run(world.clone(), component.to_owned(), queue))
}

/// Starts timed ticket pushes every `every` (the first one now).
pub(crate) fn start_timer(
    world: &Shared,
    component: &str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    lock(world).platform(component).pushes.timed = true;
    let world = world.clone();
    let component: Arc<str> = component.into();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let mut world = lock(&world);
            let pushes = &world.platform(&component).pushes;
            if !pushes.paused && !pushes.ticket(None) {
                return;
            }
        }
    })
}

/// Pushes a ticket now, after what is queued, and says how it went.
pub(crate) async fn ticket_now(world: &Shared, component: &str) -> PushLog {
    let (done, answer) = oneshot::channel();
    let queued = lock(world).platform(component).pushes.ticket(Some(done));
    assert!(queued, "fake WeChat: {component} has no push targets");
    answer.await.expect("the push task answers")
}

async fn run(world: Shared, component: String, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = queue.recv().await {
        let (push, info_type, done) = match job {
            Job::Ticket(done) => (
                ticket_push(&world, &component),
                "component_verify_ticket",
                done,
            ),
            Job::Event(push, info_type) => (push, info_type, None),
        };
        let target = lock(&world).platform(&component).pushes.next_target();
        let answer = push.send(&target).await.unwrap_or_else(|e| Answer {
            status: 0,
            body: e.to_string(),
        });
        let log = PushLog {
            info_type: info_type.to_owned(),
            target,
            answer,
        };
        lock(&world)
            .platform(&component)
            .pushes
            .log
            .push(log.clone());
        if let Some(done) = done {
            let _ = done.send(log);
        }
    }
}

/// The verify ticket push due now; the ticket is WeChat's from now on
/// (usable for its life) whether or not it is delivered.
fn ticket_push(world: &Shared, component: &str) -> Push {
    let mut world = lock(world);
    let platform = world.platform(component);
    let ticket = platform.pushes.ticket_value();
    platform.pushed(&ticket);
    let now = SystemTime::now();
    platform
        .pushes
        .sender
        .as_ref()
        .expect("targets come with a sender")
        .verify_ticket(&ticket, now, now)
}
