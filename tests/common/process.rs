//! The real `gateway-cli` binary as a child process, for tests of what only a process shows:
//! the command line, signals, logs and trace export.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway-cli");

/// How long a child may take to start listening or to exit on its own.
pub const START_DEADLINE: Duration = Duration::from_secs(20);

/// A config file under the temp dir with a unique name, removed on drop.
pub struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    pub fn new(text: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("gateway-cli-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name the gateway uses for this file in its error messages.
    pub fn name(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A running `gateway-cli` child whose output is collected in the background. Dropping it kills
/// the process, so no test leaves one behind, whatever path it takes.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The exit status once the process has exited (all its output is then in).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        self.join_readers();
        Some(status)
    }

    /// Waits (polling) until the process exits on its own, at most `limit`.
    pub fn wait_blocking(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Proc::wait_blocking`] for async tests.
    pub async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process and returns everything it printed (stdout, stderr).
    pub fn stop(&mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
        (self.stdout(), self.stderr())
    }

    /// Once the process is gone its pipes close, so the readers end and all output is in.
    pub fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Polls until the process accepts TCP connections on `addr`; panics (with its stderr) if it
    /// exits first or is not listening within [`START_DEADLINE`].
    pub async fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                panic!(
                    "the gateway exited ({status}) before listening:\n{}",
                    self.stderr()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway is not listening on {addr} after {START_DEADLINE:?}:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gateway-cli run --config <config> --listen <addr>`, to spawn (with more settings if needed).
pub fn run_command(config: &Path, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(addr.to_string());
    cmd
}

/// `gateway-cli check --config <config>`, to run (with more settings if needed) by
/// [`run_to_end`].
pub fn check_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("check").arg("--config").arg(config);
    cmd
}

/// Runs `cmd` to its end, at most [`START_DEADLINE`]; returns (status, stdout, stderr).
pub fn run_to_end(cmd: Command) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(cmd);
    let status = proc
        .wait_blocking(START_DEADLINE)
        .unwrap_or_else(|| panic!("{BIN} did not finish within {START_DEADLINE:?}"));
    (status, proc.stdout(), proc.stderr())
}

/// A loopback address nothing listens on right now: bind port 0, read the port, close.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
