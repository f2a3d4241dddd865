//! A test server run by one of the project's scripts (`scripts/test-mongodb.sh`,
//! `scripts/test-redis.sh`) in `serve` mode: the script prints the server's
//! address and stops it when its stdin closes, which also happens when the
//! test process dies. [`PrivateServer`]: one of a test's own, which it can
//! stop, start again on the same port, or signal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// Which server: its script and the scheme of the address it prints.
pub struct Kind {
    pub script: &'static str,
    /// `mongodb://`, `redis://`.
    pub scheme: &'static str,
    /// For messages: `MongoDB`, `Redis`.
    pub name: &'static str,
}

/// A server run by its script's `serve`.
pub struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The address it printed.
    pub address: String,
}

/// Starts `kind` with its data in `dir`, on `port` (0: any free one), with
/// the server's own `args`.
pub fn serve(kind: &Kind, dir: &Path, port: u16, args: &[String]) -> Served {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(kind.script);
    let mut child = Command::new("bash")
        .arg(script)
        .arg("serve")
        .arg(dir)
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", kind.script));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut address = String::new();
    BufReader::new(stdout)
        .read_line(&mut address)
        .expect("read the server's address");
    assert!(
        address.starts_with(kind.scheme),
        "test {} did not start (see stderr above)",
        kind.name
    );
    Served {
        stdin: child.stdin.take(),
        child,
        address: address.trim().to_owned(),
    }
}

impl Served {
    pub fn stop(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A server of a test's own, which it can stop and start again on the same
/// port (with its data, where the server keeps any), or signal.
pub struct PrivateServer {
    kind: &'static Kind,
    dir: tempfile::TempDir,
    port: u16,
    served: Option<Served>,
    /// The server's own options, kept for restarts.
    args: Vec<String>,
}

impl PrivateServer {
    pub fn start(kind: &'static Kind, args: &[String]) -> PrivateServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let served = serve(kind, dir.path(), 0, args);
        let port = served
            .address
            .trim_start_matches(kind.scheme)
            .trim_start_matches("127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the server's address");
        PrivateServer {
            kind,
            dir,
            port,
            served: Some(served),
            args: args.to_vec(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.served.is_some()
    }

    pub fn stop(&mut self) {
        if let Some(served) = self.served.take() {
            served.stop();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.served = Some(serve(self.kind, self.dir.path(), self.port, &self.args));
    }

    /// Sends a signal to the server process itself (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("server.pid")).expect("server.pid");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.trim())
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{signal} of the test {} failed",
            self.kind.name
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}
