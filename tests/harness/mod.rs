//! Running the real `starling-broadcaster` and `starling-viewer` programs in end-to-end tests:
//! building them once, child processes that are killed on drop and whose output is always
//! drained, a tiny HTTP/1.1 client, and a reader for the viewer's playlist.
//!
//! Use: `mod harness;` in a test crate (`tests/e2e.rs`, `tests/restart.rs`).

// Each test crate uses only part of this module.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a program may take to print its first stdout line (ticket or URL); the first
/// start of a debug build on a busy machine is slow.
pub const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a program may take to exit once asked to (or once its work is done).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long building the two programs may take: from scratch on a slow shared machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long one HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response read; segments of the test streams are far smaller.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Longest output line kept from a child; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;
/// Output lines kept per child for failure messages.
const TAIL_LINES: usize = 400;
/// How often [`poll_until`] retries.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Serialises the tests of one test binary that start a live stream: each stream is paced at
/// real time, and a shared 2-core machine keeps real time only with one of them at a time.
pub fn one_stream_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test still needs it.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The directory holding the built programs: the test binary lives in `<dir>/deps/`, so this
/// follows `CARGO_TARGET_DIR`, `build.target-dir` and the profile without guessing.
fn bin_dir() -> PathBuf {
    let exe = env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary inside <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds both programs (once per test binary) and returns the path of `name` in the same
/// target directory and profile as the test itself.
pub fn program(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_programs)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing after building it (a --target build keeps programs elsewhere)",
        path.display()
    );
    path
}

fn build_programs() -> Result<PathBuf, String> {
    let dir = bin_dir();
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "-p",
            "starling-broadcaster",
            "-p",
            "starling-viewer",
        ])
        .stdin(Stdio::null());
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    // Cargo describes the test's own package to it in CARGO_MANIFEST_DIR, CARGO_PKG_* and
    // the like; some build scripts (ring's) track those, so passing them on would make this
    // build and the next `cargo test` rebuild each other's dependencies every time.
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        let about_test_crate = ["CARGO_PKG_", "CARGO_CRATE_", "CARGO_BIN_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref());
        if about_test_crate {
            cmd.env_remove(name.as_ref());
        }
    }
    // The programs must land where this test binary is; pass its target directory along.
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let mut build = Proc::spawn("cargo build", cmd);
    let Some(status) = build.wait_exit(BUILD_TIMEOUT) else {
        return Err(format!(
            "cargo build of the programs took over {} s{}",
            BUILD_TIMEOUT.as_secs(),
            build.output_tail()
        ));
    };
    if !status.success() {
        return Err(format!(
            "cargo build of the programs failed ({status}){}",
            build.output_tail()
        ));
    }
    Ok(dir)
}

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty directory whose name contains `label`.
    pub fn new(label: &str) -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = env::temp_dir().join(format!(
            "starling-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir(&path).expect("create a temp dir");
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory, as a string for a command line.
    pub fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The last lines a child wrote to one pipe, shared with the thread that drains it.
type Tail = Arc<Mutex<VecDeque<String>>>;

/// A child process whose stdout and stderr are drained by threads (so it never blocks on a
/// full pipe), killed when dropped. When a test panics, dropping it prints the child's output
/// tail, so a failure shows what the program said.
pub struct Proc {
    name: String,
    child: Child,
    first_line: Receiver<String>,
    stdout: Tail,
    stderr: Tail,
    status: Option<ExitStatus>,
    /// The draining threads; after exit they are joined so the output is complete.
    drains: Vec<thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` as `name`, with stdout and stderr piped to draining threads. Stdin is
    /// whatever `cmd` says (null unless set).
    pub fn spawn(name: &str, cmd: Command) -> Self {
        Self::start(name, cmd, true).0
    }

    /// Starts `cmd` as `name` with its stdout handed back, to feed another process; only its
    /// stderr is drained here.
    pub fn spawn_feeding(name: &str, cmd: Command) -> (Self, ChildStdout) {
        let (proc, stdout) = Self::start(name, cmd, false);
        (proc, stdout.expect("piped stdout"))
    }

    fn start(name: &str, mut cmd: Command, drain_stdout: bool) -> (Self, Option<ChildStdout>) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        let stdout = Tail::default();
        let stderr = Tail::default();
        let (tx, first_line) = mpsc::sync_channel(1);
        let mut handed_back = None;
        let mut drains = Vec::new();
        if let Some(out) = child.stdout.take() {
            if drain_stdout {
                drains.push(drain(
                    format!("{name}-stdout"),
                    out,
                    Arc::clone(&stdout),
                    Some(tx),
                ));
            } else {
                handed_back = Some(out);
            }
        }
        if let Some(err) = child.stderr.take() {
            drains.push(drain(
                format!("{name}-stderr"),
                err,
                Arc::clone(&stderr),
                None,
            ));
        }
        let proc = Self {
            name: name.to_string(),
            child,
            first_line,
            stdout,
            stderr,
            status: None,
            drains,
        };
        (proc, handed_back)
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The first line the child writes to stdout, waiting at most `timeout`.
    pub fn first_stdout_line(&mut self, timeout: Duration) -> Result<String, String> {
        let line = self.first_line.recv_timeout(timeout);
        line.map_err(|_| {
            let status = self.try_status();
            format!(
                "{} printed no first stdout line within {} s (exit: {status:?}){}",
                self.name,
                timeout.as_secs(),
                self.output_tail()
            )
        })
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                // The child is gone, but its last lines may still be in the pipes: wait
                // (bounded) for the drains to reach end of file before anyone reads them.
                while !self.drains.iter().all(|d| d.is_finished()) && Instant::now() < until {
                    thread::sleep(Duration::from_millis(10));
                }
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT (as Ctrl-C would) to the child alone.
    pub fn interrupt(&mut self) {
        self.signal("INT");
    }

    /// Sends SIGTERM (as a service manager would) to the child alone.
    pub fn terminate(&mut self) {
        self.signal("TERM");
    }

    fn signal(&mut self, name: &str) {
        // Only while the child is unreaped is its pid surely still this child.
        if self.try_status().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
    }

    /// Sends `signal` (`"INT"` or `"TERM"`) and asserts a clean exit (status 0) within
    /// [`EXIT_TIMEOUT`].
    pub fn assert_clean_exit_on(&mut self, signal: &str) {
        self.signal(signal);
        let status = self.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {} s of SIG{signal}{}",
                self.name,
                EXIT_TIMEOUT.as_secs(),
                self.output_tail()
            )
        });
        assert!(
            status.success(),
            "SIG{signal} should end {} cleanly, got {status}{}",
            self.name,
            self.output_tail()
        );
    }

    /// Everything kept of the child's stderr, one string.
    pub fn stderr_text(&self) -> String {
        join(&self.stderr)
    }

    /// Everything kept of the child's stdout (when drained here), one string.
    pub fn stdout_text(&self) -> String {
        join(&self.stdout)
    }

    /// The kept stdout and stderr of the child, framed for a failure message.
    pub fn output_tail(&self) -> String {
        format!(
            "\n--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            join(&self.stdout),
            self.name,
            join(&self.stderr)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.output_tail());
        }
    }
}

fn join(tail: &Tail) -> String {
    let lines = tail.lock().unwrap_or_else(|p| p.into_inner());
    lines.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Reads `src` line by line until it closes, keeping the last lines in `tail` and handing the
/// first one to `first`.
fn drain(
    thread_name: String,
    src: impl Read + Send + 'static,
    tail: Tail,
    first: Option<SyncSender<String>>,
) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut first = first;
            let mut reader = BufReader::new(src);
            let mut line = Vec::new();
            while read_line_capped(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Some(tx) = first.take() {
                    let _ = tx.try_send(text.clone());
                }
                let mut lines = tail.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == TAIL_LINES {
                    lines.pop_front();
                }
                lines.push_back(text);
            }
        })
        .expect("start an output-draining thread")
}

/// Reads one line into `out` (cleared first), keeping at most [`MAX_LINE`] bytes of it;
/// returns the bytes consumed, 0 at end of input.
fn read_line_capped(reader: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<usize> {
    out.clear();
    let mut consumed = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let take = end.map_or(buf.len(), |i| i + 1);
        let room = MAX_LINE.saturating_sub(out.len()).min(take);
        out.extend_from_slice(&buf[..room]);
        reader.consume(take);
        consumed += take;
        if end.is_some() {
            return Ok(consumed);
        }
    }
}

/// A running `starling-broadcaster` and the ticket it printed.
pub struct Broadcaster {
    /// The process.
    pub proc: Proc,
    /// The first line of its stdout.
    pub ticket: String,
}

/// Starts the broadcaster with `args` and `stdin`, and waits for its ticket.
pub fn start_broadcaster(args: &[&str], stdin: Stdio) -> Broadcaster {
    start_broadcaster_via(&[], args, stdin)
}

/// As [`start_broadcaster`], with its command line behind `prefix`: a command that runs the
/// program in another setting, such as `ip netns exec NS` (empty: run it directly).
pub fn start_broadcaster_via(prefix: &[&str], args: &[&str], stdin: Stdio) -> Broadcaster {
    let mut cmd = prefixed(prefix, &program("starling-broadcaster"));
    cmd.args(args).stdin(stdin);
    let mut proc = Proc::spawn("broadcaster", cmd);
    let ticket = proc
        .first_stdout_line(FIRST_LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ticket.starts_with("starling1") && !ticket.contains(char::is_whitespace),
        "the broadcaster's first stdout line is not a ticket: {ticket:?}"
    );
    Broadcaster { proc, ticket }
}

/// A running `starling-viewer` and the playlist URL it printed.
pub struct Viewer {
    /// The process.
    pub proc: Proc,
    /// The first line of its stdout: `http://127.0.0.1:<port>/live.m3u8`.
    pub url: String,
}

impl Viewer {
    /// The URL of `path` (such as `/stats`) on this viewer's HTTP server.
    pub fn url_of(&self, path: &str) -> String {
        let base = self.url.trim_end_matches("live.m3u8");
        format!("{base}{}", path.trim_start_matches('/'))
    }
}

/// Starts a viewer of `ticket` on a free local HTTP port, with `extra` flags, and waits for
/// its playlist URL.
pub fn start_viewer(ticket: &str, extra: &[&str]) -> Viewer {
    let mut args = vec!["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    start_viewer_via(&[], ticket, &args)
}

/// Starts a viewer of `ticket` with exactly the flags `args` (no default addresses; its
/// `--http` must be on 127.0.0.1), its command line behind `prefix` as in
/// [`start_broadcaster_via`], and waits for its playlist URL.
pub fn start_viewer_via(prefix: &[&str], ticket: &str, args: &[&str]) -> Viewer {
    let mut cmd = prefixed(prefix, &program("starling-viewer"));
    cmd.arg(ticket).args(args).stdin(Stdio::null());
    let mut proc = Proc::spawn("viewer", cmd);
    let url = proc
        .first_stdout_line(FIRST_LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/live.m3u8"),
        "the viewer's first stdout line is not a local playlist URL: {url:?}"
    );
    Viewer { proc, url }
}

/// A command running `program` behind `prefix` (`prefix[0]` is the command run), or `program`
/// itself when `prefix` is empty.
fn prefixed(prefix: &[&str], program: &Path) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, for at most `timeout`.
pub fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET url`.
pub fn get(url: &str) -> io::Result<Response> {
    request("GET", url)
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close`, bounded in time and
/// size. Only `http://host:port/path` URLs.
pub fn request(method: &str, url: &str) -> io::Result<Response> {
    request_with(method, url, &[])
}

/// [`request`] with extra headers (name, value).
pub fn request_with(method: &str, url: &str, extra: &[(&str, &str)]) -> io::Result<Response> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {url}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| invalid("not an http URL"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr = host
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid("no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let extra: String = extra.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut head_end = None;
    loop {
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "response too slow"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE {
            return Err(invalid("response too large"));
        }
        if head_end.is_none() {
            head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        }
        // A HEAD response, or a body of known length fully read, needs no wait for the close.
        if let Some(end) = head_end {
            let known = parse_head(&raw[..end])?;
            let want = if method == "HEAD" {
                Some(0)
            } else {
                content_length(&known.1)
            };
            if want.is_some_and(|len| raw.len() >= end + len) {
                break;
            }
        }
    }
    let end = head_end.ok_or_else(|| invalid("no complete response head"))?;
    let (status, headers) = parse_head(&raw[..end])?;
    let mut body = raw.split_off(end);
    if method == "HEAD" {
        body.clear();
    } else if let Some(len) = content_length(&headers) {
        if body.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "body shorter than Content-Length",
            ));
        }
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// `/stats` at `url`, parsed.
pub fn stats_at(url: &str) -> serde_json::Value {
    let response = get(url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status, 200, "{url}: {}", response.text());
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{url} is not JSON ({e}): {}", response.text()))
}

/// The broadcaster's `/stats`, at the URL it logs on stderr (soon after the ticket).
pub fn broadcaster_stats(broadcaster: &Broadcaster) -> serde_json::Value {
    stats_at(&broadcaster_url(broadcaster, "/stats"))
}

/// The URL of the broadcaster's `/stats`, as it logs it on stderr (soon after the ticket).
pub fn broadcaster_stats_url(broadcaster: &Broadcaster) -> String {
    broadcaster_url(broadcaster, "/stats")
}

/// The URL of `path` (such as `/metrics`) on the broadcaster's HTTP server, found from the
/// `/stats` URL it logs on stderr (soon after the ticket).
pub fn broadcaster_url(broadcaster: &Broadcaster, path: &str) -> String {
    let find_url = || {
        let log = strip_ansi(&broadcaster.proc.stderr_text());
        log.split(|c: char| c.is_whitespace() || c == '"' || c == '=')
            .find(|word| word.starts_with("http://") && word.ends_with("/stats"))
            .map(str::to_string)
    };
    let url = poll_until(FIRST_LINE_TIMEOUT, find_url).unwrap_or_else(|| {
        panic!(
            "the broadcaster logged no stats URL{}",
            broadcaster.proc.output_tail()
        )
    });
    format!(
        "{}/{}",
        url.trim_end_matches("/stats"),
        path.trim_start_matches('/')
    )
}

/// A count in a stats object: a number, or the length of a list (peers may be listed).
pub fn count(stats: &serde_json::Value, field: &str) -> u64 {
    match stats.get(field) {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .unwrap_or_else(|| panic!("stats field {field} is not a count: {stats}")),
        Some(serde_json::Value::Array(list)) => list.len() as u64,
        _ => panic!("stats lack the field {field}: {stats}"),
    }
}

/// `text` without ANSI colour escapes, which a log line may carry.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skips `ESC [ ... letter`.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One media segment as a playlist lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The number in its URI `seg/<n>.ts`.
    pub number: u64,
    /// The URI as written.
    pub uri: String,
    /// Whether `#EXT-X-DISCONTINUITY` precedes it.
    pub discontinuity: bool,
    /// Its `#EXT-X-PROGRAM-DATE-TIME` in ms since the Unix epoch, if tagged.
    pub program_date_time: Option<u64>,
}

/// The parts of a media playlist these tests look at.
#[derive(Debug, Clone, Default)]
pub struct Playlist {
    /// `#EXT-X-MEDIA-SEQUENCE`, if present.
    pub media_sequence: Option<u64>,
    /// The segments, in order.
    pub entries: Vec<Entry>,
    /// Whether it ends with `#EXT-X-ENDLIST`.
    pub ended: bool,
}

impl Playlist {
    /// Reads playlist text; panics on a segment URI that is not `seg/<n>.ts`.
    pub fn parse(text: &str) -> Self {
        let mut playlist = Playlist::default();
        let mut discontinuity = false;
        let mut program_date_time = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(n) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
                playlist.media_sequence = n.trim().parse().ok();
            } else if let Some(time) = line.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:") {
                program_date_time = Some(parse_rfc3339_ms(time).unwrap_or_else(|| {
                    panic!("EXT-X-PROGRAM-DATE-TIME not RFC 3339: {line:?}\n{text}")
                }));
            } else if line == "#EXT-X-DISCONTINUITY" {
                discontinuity = true;
            } else if line == "#EXT-X-ENDLIST" {
                playlist.ended = true;
            } else if !line.starts_with('#') {
                let number = line
                    .rsplit('/')
                    .next()
                    .and_then(|name| name.strip_suffix(".ts"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("segment URI not seg/<n>.ts: {line:?}\n{text}"));
                playlist.entries.push(Entry {
                    number,
                    uri: line.to_string(),
                    discontinuity,
                    program_date_time: program_date_time.take(),
                });
                discontinuity = false;
            }
        }
        playlist
    }

    /// The highest segment number listed.
    pub fn max_number(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.number).max()
    }
}

/// Parses an RFC 3339 date-time such as `2024-02-29T12:34:56.789Z` or
/// `2024-02-29T13:34:56+01:00` into ms since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once(['T', 't'])?;
    let mut ymd = date.splitn(3, '-').map(|n| n.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset_min) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(at);
        let (h, m) = zone.get(1..)?.split_once(':')?;
        let minutes = h.parse::<i64>().ok()? * 60 + m.parse::<i64>().ok()?;
        (
            clock,
            if zone.starts_with('-') {
                -minutes
            } else {
                minutes
            },
        )
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = whole.splitn(3, ':').map(|n| n.parse::<i64>().ok());
    let (hour, minute, second) = (hms.next()??, hms.next()??, hms.next()??);
    let millis = format!("{fraction:0<3}").get(..3)?.parse::<i64>().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date, counted in 400-year eras
    // that start on 1 March (so the leap day ends a year).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    u64::try_from(seconds * 1000 + millis).ok()
}

/// Fetches and parses the playlist at `url`; None unless the server answers 200.
pub fn fetch_playlist(url: &str) -> Option<(Playlist, String)> {
    let response = get(url).ok()?;
    if response.status != 200 {
        return None;
    }
    let text = response.text();
    Some((Playlist::parse(&text), text))
}

/// Waits (at most `timeout`) until the playlist at `url` has listed at least `segments`
/// segments, over its reloads: a viewer's live window lists only two at a time
/// (`viewer::PLAYER_WINDOW`), so this counts from the first segment it saw listed.
pub fn wait_for_segments(url: &str, segments: usize, timeout: Duration) -> (Playlist, String) {
    let mut last = String::from("(no 200 response)");
    let mut first_seen: Option<u64> = None;
    poll_until(timeout, || {
        let (playlist, text) = fetch_playlist(url)?;
        last.clone_from(&text);
        let first = playlist.entries.iter().map(|e| e.number).min()?;
        let first = *first_seen.get_or_insert(first);
        let newest = playlist.max_number()?;
        let seen = usize::try_from(newest.saturating_sub(first).saturating_add(1)).ok()?;
        let enough = seen >= segments || playlist.entries.len() >= segments;
        enough.then_some((playlist, text))
    })
    .unwrap_or_else(|| {
        panic!(
            "{url} did not list {segments} segments within {} s; last playlist:\n{last}",
            timeout.as_secs()
        )
    })
}

/// Resolves a playlist's segment URI against the playlist URL.
pub fn resolve(playlist_url: &str, uri: &str) -> String {
    if uri.starts_with("http://") {
        return uri.to_string();
    }
    if let Some(path) = uri.strip_prefix('/') {
        let host_end = playlist_url
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/'))
            .map_or(playlist_url.len(), |i| i + "http://".len());
        return format!("{}/{path}", &playlist_url[..host_end]);
    }
    let base = playlist_url
        .rsplit_once('/')
        .map_or(playlist_url, |(b, _)| b);
    format!("{base}/{uri}")
}

/// Runs ffmpeg once to write `seconds` of the test pattern with a tone to `path`, in the
/// container its extension names (`.ts`, `.mp4`, ...).
pub fn make_clip(path: &str, seconds: u32) {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "25"])
        .args(["-c:a", "aac", path])
        .stdin(Stdio::null())
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg could not write {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that `proc` exits (within a minute) with failure and says why in one clear line
/// containing `needle` (case-insensitive): no panic, no backtrace, no error chain.
///
/// Apart from that line, stderr may hold only the program's log lines (timestamped by
/// tracing) and, after a flag error, clap's usage hints below its `error:` line. The
/// program's own error line must be the last thing it writes.
pub fn assert_clear_failure(proc: &mut Proc, what: &str, needle: &str) {
    let status = proc
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{what}: the program did not exit{}", proc.output_tail()));
    assert!(
        !status.success(),
        "{what}: exited successfully{}",
        proc.output_tail()
    );
    let stderr = strip_ansi(&proc.stderr_text());
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "Caused by:",
    ] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr has {bad:?} instead of one clear line{}",
            proc.output_tail()
        );
    }
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_log_line(l))
        .collect();
    let line = match said.first() {
        // clap: its one-line error first, then usage and tips for the reader.
        Some(first) if first.starts_with("error:") => *first,
        _ => {
            assert_eq!(
                said.len(),
                1,
                "{what}: stderr should say one thing besides log lines: {said:?}{}",
                proc.output_tail()
            );
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            assert_eq!(
                last.map(str::trim),
                said.first().copied(),
                "{what}: the error should be the last line{}",
                proc.output_tail()
            );
            said[0]
        }
    };
    assert!(
        line.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: the error line should name {needle:?}: {line:?}{}",
        proc.output_tail()
    );
}

/// Whether `line` is one of tracing's log lines: `<RFC 3339 time> <LEVEL> ...`.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let timestamp = words.next().is_some_and(|w| {
        w.len() > 10
            && w.as_bytes().get(4) == Some(&b'-')
            && w.contains('T')
            && w.bytes().take(4).all(|b| b.is_ascii_digit())
    });
    let level = words
        .next()
        .is_some_and(|w| ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&w));
    timestamp && level
}
