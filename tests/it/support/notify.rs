//! systemd's side of `Type=notify`: a Unix datagram socket the daemon is
//! given as `NOTIFY_SOCKET`, read by a thread of its own (a sender blocks
//! once a few unread datagrams queue up), and the messages it received
//! (`READY=1`, `WATCHDOG=1`, `STATUS=...`), each with when it came.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{eventually, WAIT};

/// One datagram: its lines, and when it arrived.
#[derive(Debug, Clone)]
pub struct Message {
    pub at: Instant,
    pub lines: Vec<String>,
}

impl Message {
    pub fn has(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l == line)
    }
}

pub struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<Message>>>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let lines = String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .map(str::to_owned)
                        .collect();
                    sink.lock().expect("lock").push(Message {
                        at: Instant::now(),
                        lines,
                    });
                }
            }
        });
        NotifySocket {
            path,
            received,
            stop,
            _dir: dir,
        }
    }

    /// What the daemon's environment needs: `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` when `watchdog` is given.
    pub fn env(&self, watchdog: Option<Duration>) -> Vec<(&'static str, String)> {
        let mut env = vec![("NOTIFY_SOCKET", self.path.display().to_string())];
        if let Some(interval) = watchdog {
            env.push(("WATCHDOG_USEC", interval.as_micros().to_string()));
        }
        env
    }

    /// Every message so far, oldest first.
    pub fn messages(&self) -> Vec<Message> {
        self.received.lock().expect("lock").clone()
    }

    /// When each message with `line` came.
    pub fn times_of(&self, line: &str) -> Vec<Instant> {
        self.messages()
            .iter()
            .filter(|m| m.has(line))
            .map(|m| m.at)
            .collect()
    }

    /// Waits until `n` messages with `line` came, and returns when each did.
    pub async fn wait_for(&self, line: &str, n: usize) -> Vec<Instant> {
        eventually(WAIT, &format!("{n} times {line}"), || async {
            let times = self.times_of(line);
            (times.len() >= n).then_some(times)
        })
        .await
    }
}

impl NotifySocket {
    /// Every message sent before this call, read: a marker sent now comes
    /// after them (a datagram socket keeps order).
    pub async fn settle(&self) -> Vec<Message> {
        let marker = format!("X_TEST_MARKER={:?}", Instant::now());
        UnixDatagram::unbound()
            .and_then(|s| s.send_to(marker.as_bytes(), &self.path))
            .expect("send a marker");
        eventually(WAIT, "the notify socket to be read", || async {
            let messages = self.messages();
            let at = messages.iter().position(|m| m.has(&marker))?;
            Some(messages[..at].to_vec())
        })
        .await
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
