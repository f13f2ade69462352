//! A real browser plays the viewer's watch page: headless Chromium opens `/`, and the test asks
//! it over the DevTools protocol whether the `<video>` has a picture that moves, whether hls.js
//! plays the LL-HLS playlist with parts, and whether the viewer's figures appear on the page.
//!
//! Needs Debian's `chromium` (CI installs it); without it the test is skipped loudly, on CI it
//! fails.

mod common;
mod harness;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::players::require_tool;
use harness::{
    get, one_stream_at_a_time, poll_until, start_broadcaster, start_viewer, wait_for_segments,
    Proc, TempDir,
};

/// How long a fresh mesh may take to list its first segments: start-up of debug builds, the
/// first segments cut, the hold-back, on a busy shared machine.
const FIRST_SEGMENTS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Chromium may take to start, load the page and hls.js, and show a first picture.
const PLAYING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the figures and a moving picture may take to appear once it plays.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest DevTools message read; page evaluations answer a few hundred bytes, target lists
/// a few kB.
const MAX_MESSAGE: u64 = 4 * 1024 * 1024;

#[test]
fn chromium_plays_the_watch_page_and_shows_the_figures() {
    if !require_tool("chromium") {
        return;
    }
    let _one = one_stream_at_a_time();
    let dir = TempDir::new("browser");
    let key = dir.file("key");
    let broadcaster = start_broadcaster(
        &[
            "--key",
            &key,
            "--http",
            "127.0.0.1:0",
            "--segment-duration",
            "1",
        ],
        Stdio::null(),
    );
    let viewer = start_viewer(&broadcaster.ticket, &["--delay", "2"]);
    let _partner = start_viewer(&broadcaster.ticket, &["--delay", "2"]);
    wait_for_segments(&viewer.url, 3, FIRST_SEGMENTS_TIMEOUT);

    let page = viewer.url_of("/");
    let profile = TempDir::new("browser-profile");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
        "--remote-allow-origins=*",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(&page)
    .stdin(Stdio::null());
    let mut chromium = Proc::spawn("chromium", cmd);

    // Chromium writes the port it chose into the profile once DevTools listens.
    let port_file = profile.path().join("DevToolsActivePort");
    let port: u16 = poll_until(PLAYING_TIMEOUT, || {
        std::fs::read_to_string(&port_file)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    })
    .unwrap_or_else(|| panic!("chromium wrote no DevTools port{}", chromium.output_tail()));
    let socket_url = poll_until(PLAYING_TIMEOUT, || page_socket_url(port, &page))
        .unwrap_or_else(|| panic!("chromium never listed {page}{}", chromium.output_tail()));
    let mut devtools = DevTools::connect(&socket_url)
        .unwrap_or_else(|e| panic!("cannot open DevTools at {socket_url}: {e}"));

    let playing = poll_until(PLAYING_TIMEOUT, || {
        let video = devtools.video().ok()?;
        (video.width > 0 && video.time > 0.0).then_some(video)
    })
    .unwrap_or_else(|| {
        panic!(
            "the page's <video> shows no picture: {:?}{}",
            devtools.video(),
            chromium.output_tail()
        )
    });
    assert!(playing.height > 0, "{playing:?}");
    let later = poll_until(PROGRESS_TIMEOUT, || {
        let video = devtools.video().ok()?;
        (video.time > playing.time + 1.0).then_some(video)
    })
    .unwrap_or_else(|| {
        panic!(
            "the picture does not move on: from {playing:?} to {:?}",
            devtools.video()
        )
    });
    eprintln!("chromium played the watch page: {playing:?} then {later:?}");

    // It plays LL-HLS: hls.js read parts from the playlist and fetched some of them.
    let parts = poll_until(PROGRESS_TIMEOUT, || {
        let parts = devtools.parts().ok()?;
        (parts.listed > 0 && parts.fetched > 0).then_some(parts)
    })
    .unwrap_or_else(|| panic!("hls.js plays without parts: {:?}", devtools.parts()));
    eprintln!("hls.js in low-latency mode: {parts:?}");

    let figures = poll_until(PROGRESS_TIMEOUT, || {
        let figures = devtools.figures().ok()?;
        figures.complete().then_some(figures)
    })
    .unwrap_or_else(|| panic!("the page's figures stay empty: {:?}", devtools.figures()));
    eprintln!("the page shows: {figures:?}");
    assert!(figures.partners.starts_with(|c: char| c.is_ascii_digit()));
    assert!(figures.share.ends_with('%'), "{figures:?}");
    assert!(figures.behind.ends_with(" s"), "{figures:?}");
    assert!(figures.missed.parse::<u64>().is_ok(), "{figures:?}");
    assert!(figures.commands.contains(&format!("vlc {}", viewer.url)));

    drop(devtools);
    chromium.terminate();
    let _ = chromium.wait_exit(harness::EXIT_TIMEOUT);
}

/// The DevTools websocket URL of the tab showing `page`, once Chromium lists it.
fn page_socket_url(port: u16, page: &str) -> Option<String> {
    let list = get(&format!("http://127.0.0.1:{port}/json/list")).ok()?;
    let targets: serde_json::Value = serde_json::from_slice(&list.body).ok()?;
    targets.as_array()?.iter().find_map(|t| {
        let is_page = t["type"] == "page" && t["url"].as_str()?.starts_with(page);
        is_page.then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))?
    })
}

/// What the page's `<video>` element reports.
#[derive(Debug, Clone, Copy)]
struct Video {
    width: u64,
    height: u64,
    time: f64,
}

/// What hls.js made of the LL-HLS playlist.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug
struct Parts {
    /// Parts in the playlist it last loaded.
    listed: u64,
    /// Part requests the page made.
    fetched: u64,
    /// It saw `CAN-BLOCK-RELOAD=YES`.
    can_block_reload: bool,
}

/// The figures the page shows, as text.
#[derive(Debug)]
struct Figures {
    partners: String,
    share: String,
    buffer: String,
    behind: String,
    missed: String,
    commands: String,
}

impl Figures {
    /// Every figure has left its placeholder (an en dash).
    fn complete(&self) -> bool {
        [
            &self.partners,
            &self.share,
            &self.buffer,
            &self.behind,
            &self.missed,
        ]
        .iter()
        .all(|f| !f.is_empty() && f.as_str() != "\u{2013}")
    }
}

/// A DevTools session with one page over its websocket: a minimal client (text frames,
/// masked as a client must, no extensions) that is all `Runtime.evaluate` needs.
struct DevTools {
    stream: TcpStream,
    next_id: u64,
}

impl DevTools {
    /// Opens the websocket at `url` (`ws://127.0.0.1:<port>/devtools/page/<id>`).
    fn connect(url: &str) -> io::Result<DevTools> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| invalid("not a ws:// URL"))?;
        let (host, path) = rest.split_at(rest.find('/').ok_or_else(|| invalid("no path"))?);
        let mut stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )?;
        // The handshake answer ends with an empty line; frames follow only after a request.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte)?;
            head.push(byte[0]);
            if head.len() > 16 * 1024 {
                return Err(invalid("handshake answer too long"));
            }
        }
        let head = String::from_utf8_lossy(&head);
        if !head.starts_with("HTTP/1.1 101") {
            return Err(invalid(&format!("handshake refused: {head}")));
        }
        Ok(DevTools { stream, next_id: 1 })
    }

    /// Evaluates `expression` in the page and returns its value (by value, as JSON).
    fn evaluate(&mut self, expression: &str) -> io::Result<serde_json::Value> {
        let id = self.next_id;
        self.next_id += 1;
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        self.send(call.to_string().as_bytes())?;
        loop {
            let message: serde_json::Value = serde_json::from_slice(&self.receive()?)?;
            // Events the page sends unasked carry no id; skip them.
            if message["id"] == id {
                return Ok(message["result"]["result"]["value"].clone());
            }
        }
    }

    fn video(&mut self) -> io::Result<Video> {
        let v = self.evaluate(
            "(() => { const v = document.querySelector('video'); \
             return v ? [v.videoWidth, v.videoHeight, v.currentTime] : null; })()",
        )?;
        Ok(Video {
            width: v[0].as_u64().unwrap_or(0),
            height: v[1].as_u64().unwrap_or(0),
            time: v[2].as_f64().unwrap_or(0.0),
        })
    }

    fn parts(&mut self) -> io::Result<Parts> {
        let v = self.evaluate(
            "(() => { const h = window.starlingHls; \
             const d = h && h.levels && h.levels[0] && h.levels[0].details; \
             const fetched = performance.getEntriesByType('resource') \
               .filter(e => e.name.includes('/part/')).length; \
             return [d && d.partList ? d.partList.length : 0, fetched, \
               d && d.canBlockReload ? 1 : 0]; })()",
        )?;
        Ok(Parts {
            listed: v[0].as_u64().unwrap_or(0),
            fetched: v[1].as_u64().unwrap_or(0),
            can_block_reload: v[2].as_u64() == Some(1),
        })
    }

    fn figures(&mut self) -> io::Result<Figures> {
        let v = self.evaluate(
            "['stat-partners', 'stat-share', 'stat-buffer', 'stat-behind', 'stat-missed', \
             'commands'].map(id => { const e = document.getElementById(id); \
             return e ? e.textContent.trim() : ''; })",
        )?;
        let text = |i: usize| v[i].as_str().unwrap_or("").to_owned();
        Ok(Figures {
            partners: text(0),
            share: text(1),
            buffer: text(2),
            behind: text(3),
            missed: text(4),
            commands: text(5),
        })
    }

    /// Sends one masked text frame.
    fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // Any mask will do: it guards proxies, not secrets.
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)
    }

    /// Reads one whole message (joining continuation frames, skipping pings and pongs).
    fn receive(&mut self) -> io::Result<Vec<u8>> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head)?;
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let length = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n)?;
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n)?;
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            if length > MAX_MESSAGE || message.len() as u64 + length > MAX_MESSAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "message too big",
                ));
            }
            let mut payload = vec![0u8; length as usize];
            self.stream.read_exact(&mut payload)?;
            match opcode {
                0x8 => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed")),
                0x9 => continue,
                0xa => continue,
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return Ok(message);
            }
        }
    }
}
