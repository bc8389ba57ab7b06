//! A real `redis-server` on a free loopback port, for the rate-limit tests: started per test (so
//! tests run in parallel without sharing counters), killable and restartable on the same port,
//! killed on drop. Blocking calls: they take milliseconds, and the gateway's tasks run on the
//! runtime's worker threads meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server gets to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// Fresh ports tried when one was taken between picking it and Redis binding it.
const START_ATTEMPTS: usize = 5;

const MISSING: &str = "redis-server not found; install it with `apt-get install -y redis-server` (Debian/Ubuntu) to run the Redis tests";

#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers PING. `None` (after
    /// telling how to install it) when `redis-server` is not on PATH, so the calling test can
    /// return early; on CI (`CI=true`) a missing server fails the test instead.
    pub fn start() -> Option<Self> {
        let Some(binary) = find_on_path("redis-server") else {
            if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
                panic!("{MISSING} (CI=true: the Redis tests must run)");
            }
            eprintln!("{MISSING}");
            return None;
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut server = Self {
                binary: binary.clone(),
                port: free_port(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => failures.push(e),
            }
        }
        panic!("redis-server did not start: {failures:?}");
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, and wait until the process is gone (its port is closed once this returns).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the server keeps its port and connections but answers nothing (a hung Redis).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Starts a fresh (empty) server on the same port, after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn()
            .unwrap_or_else(|e| panic!("redis-server did not restart on port {}: {e}", self.port));
    }

    /// Sends one command and reads its reply.
    pub fn command(&self, args: &[&str]) -> Reply {
        let mut stream = connect(self.addr(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("cannot connect to redis-server: {e}"));
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = parse(&buf) {
                return reply;
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "redis-server closed the connection mid-reply");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The names of the keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let Reply::Array(items) = self.command(&["KEYS", pattern]) else {
            panic!("KEYS did not answer with an array");
        };
        let mut keys: Vec<String> = items
            .into_iter()
            .map(|item| match item {
                Reply::Bulk(Some(key)) => key,
                other => panic!("unexpected KEYS item {other:?}"),
            })
            .collect();
        keys.sort();
        keys
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("port {}: redis-server exited with {status}", self.port));
            }
            if answers_ping(self.addr()) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("port {}: no PONG within {READY_WITHIN:?}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A port nothing listens on right now: bind, read the port, close.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = connect(addr, Duration::from_millis(500)) else {
        return false;
    };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 7 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"+PONG")
}

/// One complete reply at the start of `buf` and its length, or `None` if more bytes are needed.
fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..line_end]).unwrap().to_owned();
    let after = line_end + 2;
    match buf.first()? {
        b'+' => Some((Reply::Status(line), after)),
        b'-' => Some((Reply::Error(line), after)),
        b':' => Some((Reply::Int(line.parse().unwrap()), after)),
        b'$' => {
            let len: i64 = line.parse().unwrap();
            if len < 0 {
                return Some((Reply::Bulk(None), after));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return None;
            }
            let text = String::from_utf8_lossy(&buf[after..end]).into_owned();
            Some((Reply::Bulk(Some(text)), end + 2))
        }
        b'*' => {
            let n: i64 = line.parse().unwrap();
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n.max(0) {
                let (item, used) = parse(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        other => panic!("unexpected RESP type byte {other:#x}"),
    }
}
