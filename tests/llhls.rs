//! LL-HLS and cut-through from the local HTTP server, over an in-memory connection with the
//! clock paused: a blocking reload returns once the part it waits for is verified and times out
//! with the playlist as it is; a hinted part is answered once verified; a segment still arriving
//! streams exactly its verified bytes and ends cleanly when they stop.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use starling::http::{serve_stream, ArrivingSegment, Catalog, ServeConfig};
use starling::llhls::{self, Entry, View};
use starling::playlist::SegmentInfo;
use starling::ts::Segmenter;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

/// Real segments: the H.264 fixture cut at 1 s.
fn fixture_segments() -> Vec<Bytes> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/h264.ts");
    let mut segmenter = Segmenter::new(Duration::from_secs(1));
    let mut cut = segmenter.push(&std::fs::read(path).unwrap());
    cut.extend(segmenter.finish());
    assert!(cut.len() >= 3, "the fixture gives {} segments", cut.len());
    cut.into_iter().map(|s| s.data).collect()
}

/// Durations in the fake are ten seconds: only the bounds (three target durations) and
/// hold-back read them, and a long bound shows a wait ended by the bytes, not by the clock.
const DURATION_MS: u32 = 10_000;

/// A node stand-in: whole segments, one arriving with a verified prefix, and the
/// notification a real node gives as pieces are verified.
struct Fake {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

struct State {
    whole: BTreeMap<u64, Bytes>,
    /// The segment arriving: its number, all its bytes, and how many are verified.
    arriving: Option<(u64, Bytes, usize)>,
}

impl Fake {
    fn new(
        whole: impl IntoIterator<Item = (u64, Bytes)>,
        arriving: Option<(u64, Bytes, usize)>,
    ) -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::new(State {
                whole: whole.into_iter().collect(),
                arriving,
            }),
            changes: watch::Sender::new(0),
        })
    }

    /// More of the arriving segment is verified (all of it: it is stored whole).
    fn verify_upto(&self, upto: usize) {
        {
            let mut state = self.state.lock().unwrap();
            let (number, data, verified) = state.arriving.clone().unwrap();
            if upto >= data.len() {
                state.arriving = None;
                state.whole.insert(number, data);
            } else {
                state.arriving = Some((number, data, upto.max(verified)));
            }
        }
        self.changes.send_modify(|v| *v += 1);
    }

    /// The arriving segment is given up without a notification, as a node drops one.
    fn give_up(&self) {
        self.state.lock().unwrap().arriving = None;
    }

    fn info(number: u64) -> SegmentInfo {
        SegmentInfo {
            duration: Duration::from_millis(u64::from(DURATION_MS)),
            published_unix_ms: 1_700_000_000_000 + number * 10_000,
            discontinuity: false,
        }
    }
}

impl Catalog for Fake {
    fn index_html(&self) -> &'static str {
        ""
    }
    fn playlist(&self) -> Option<String> {
        None
    }
    fn segment(&self, number: u64) -> Option<Bytes> {
        self.state.lock().unwrap().whole.get(&number).cloned()
    }
    fn stats_json(&self) -> String {
        "{}".to_owned()
    }
    fn metrics_text(&self) -> Option<String> {
        None
    }
    fn history_json(&self) -> Option<String> {
        None
    }

    fn ll_playlist(&self) -> Option<View> {
        let state = self.state.lock().unwrap();
        let mut entries: Vec<Entry> = state
            .whole
            .iter()
            .map(|(&number, data)| Entry {
                number,
                info: Fake::info(number),
                parts: llhls::parts(data, data.len(), DURATION_MS),
                complete: true,
            })
            .collect();
        if let Some((number, data, verified)) = &state.arriving {
            entries.push(Entry {
                number: *number,
                info: Fake::info(*number),
                parts: llhls::parts(&data[..*verified], data.len(), DURATION_MS),
                complete: false,
            });
        }
        Some(View {
            entries,
            discontinuity_sequence: 0,
            ended: false,
            delay: 0,
        })
    }

    fn part(&self, number: u64, index: usize) -> Option<Bytes> {
        let state = self.state.lock().unwrap();
        let (data, verified) = match (state.whole.get(&number), &state.arriving) {
            (Some(data), _) => (data.clone(), data.len()),
            (None, Some((n, data, verified))) if *n == number => (data.clone(), *verified),
            _ => return None,
        };
        let part = llhls::parts(&data[..verified], data.len(), DURATION_MS)
            .get(index)?
            .clone();
        Some(data.slice(part.range))
    }

    fn arriving(&self, number: u64) -> Option<ArrivingSegment> {
        let state = self.state.lock().unwrap();
        let (n, data, verified) = state.arriving.as_ref()?;
        // In pieces of 16 KiB, as a node verifies them.
        (*n == number).then(|| ArrivingSegment {
            len: data.len(),
            duration: Duration::from_millis(u64::from(DURATION_MS)),
            prefix: (0..*verified)
                .step_by(16 * 1024)
                .map(|at| data.slice(at..(at + 16 * 1024).min(*verified)))
                .collect(),
        })
    }

    fn arrivals(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

/// A connection to a server for `catalog`, run in a task.
fn connect(catalog: Arc<Fake>) -> DuplexStream {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let local = "127.0.0.1:8080".parse().unwrap();
    tokio::spawn(serve_stream(server, local, catalog, ServeConfig::default()));
    client
}

/// Sends `GET path` asking to close afterwards.
async fn send(stream: &mut DuplexStream, path: &str) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n\r\n");
    stream.write_all(raw.as_bytes()).await.unwrap();
}

/// A whole response: status, lower-case headers, body (chunked bodies decoded; a chunked
/// body must end with its last chunk, so a clean end is told from a cut connection).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// Reads the rest of a response on a connection that closes after it.
async fn reply(mut stream: DuplexStream) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end..];
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        let (body, complete) = dechunk(rest);
        assert!(complete, "the chunked body has no last chunk");
        body
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body: the bytes, and whether its last (empty) chunk came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return (body, true);
        }
        let start = line_end + 2;
        if raw.len() < start + size + 2 {
            body.extend_from_slice(&raw[start.min(raw.len())..(start + size).min(raw.len())]);
            return (body, false);
        }
        body.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
}

/// Reads what has come so far without waiting for more than one read.
async fn read_some(stream: &mut DuplexStream, into: &mut Vec<u8>) {
    let mut chunk = [0u8; 64 * 1024];
    let read = stream.read(&mut chunk).await.unwrap();
    into.extend_from_slice(&chunk[..read]);
}

/// Two segments whole, the third arriving with `verified` of its bytes.
fn stream_with_arriving(verified: impl FnOnce(&[u8]) -> usize) -> (Arc<Fake>, Bytes) {
    let segments = fixture_segments();
    let arriving = segments[2].clone();
    let verified = verified(&arriving);
    let fake = Fake::new(
        [(0, segments[0].clone()), (1, segments[1].clone())],
        Some((2, arriving.clone(), verified)),
    );
    (fake, arriving)
}

#[tokio::test(start_paused = true)]
async fn a_blocking_reload_returns_once_its_part_is_verified() {
    // The arriving segment with its first part verified.
    let (fake, data) = stream_with_arriving(|data| {
        let all = llhls::parts(data, data.len(), DURATION_MS);
        assert!(all.len() >= 3, "{all:?}");
        // Part 0 ends where the packet starting part 1 is whole.
        all[1].range.start + 188
    });
    let all = llhls::parts(&data, data.len(), DURATION_MS);
    let view = fake.ll_playlist().unwrap();
    assert_eq!(view.preload_hint(), Some((2, 1)));

    let mut blocked = connect(fake.clone());
    send(&mut blocked, "/ll.m3u8?_HLS_msn=2&_HLS_part=1").await;
    let mut hinted = connect(fake.clone());
    send(&mut hinted, "/part/2.1.ts").await;
    let blocked = tokio::spawn(reply(blocked));
    let hinted = tokio::spawn(reply(hinted));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!blocked.is_finished() && !hinted.is_finished());

    // Part 1's bytes arrive, and the packet starting part 2 that ends it.
    fake.verify_upto(all[2].range.start + 188);
    let playlist = blocked.await.unwrap();
    assert_eq!(playlist.status, 200);
    let text = String::from_utf8(playlist.body).unwrap();
    assert!(text.contains("#EXT-X-PART:DURATION="), "{text}");
    assert!(text.contains("URI=\"part/2.1.ts\""), "{text}");
    assert!(
        text.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/2.2.ts\""),
        "{text}"
    );
    assert!(text.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK="));
    let parsed: hls_m3u8::MediaPlaylist<'_> = text.parse().unwrap();
    assert_eq!(parsed.segments.num_elements(), 2);

    let part = hinted.await.unwrap();
    assert_eq!(part.status, 200);
    assert_eq!(part.body, &data[all[1].range.clone()]);
    assert_eq!(
        part.headers["content-length"],
        all[1].range.len().to_string()
    );
}

#[tokio::test(start_paused = true)]
async fn a_blocking_reload_times_out_with_the_playlist_as_it_is() {
    let (fake, _) = stream_with_arriving(|_| 0);
    let before = fake.ll_playlist().unwrap();
    let mut stream = connect(fake.clone());
    send(&mut stream, "/ll.m3u8?_HLS_msn=2&_HLS_part=0").await;
    let started = tokio::time::Instant::now();
    let answer = reply(stream).await;
    // Virtual time: three target durations of ten seconds.
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert_eq!(answer.status, 200);
    assert_eq!(
        String::from_utf8(answer.body).unwrap(),
        llhls::render(&before).unwrap()
    );

    // A hinted part that never comes: 404 after the same bound.
    let mut stream = connect(fake.clone());
    send(&mut stream, "/part/2.0.ts").await;
    assert_eq!(reply(stream).await.status, 404);
    // Asked too far ahead, or malformed: 400 at once.
    for path in [
        "/ll.m3u8?_HLS_msn=5",
        "/ll.m3u8?_HLS_part=1",
        "/ll.m3u8?_HLS_msn=x",
    ] {
        let mut stream = connect(fake.clone());
        send(&mut stream, path).await;
        let started = tokio::time::Instant::now();
        assert_eq!(reply(stream).await.status, 400, "{path}");
        assert!(started.elapsed() < Duration::from_secs(30), "{path}");
    }
    // A part that will not come (an older segment has no such part) is 404 at once.
    let mut stream = connect(fake);
    send(&mut stream, "/part/0.999.ts").await;
    let started = tokio::time::Instant::now();
    assert_eq!(reply(stream).await.status, 404);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_segment_still_arriving_streams_exactly_its_verified_bytes() {
    // 300 bytes verified: one whole TS packet may go.
    let (fake, data) = stream_with_arriving(|_| 300);
    let mut stream = connect(fake.clone());
    send(&mut stream, "/seg/2.ts").await;
    let mut raw = Vec::new();
    // The head and the first chunk: exactly the whole packets verified.
    loop {
        read_some(&mut stream, &mut raw).await;
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let (body, _) = dechunk(&raw[end + 4..]);
            if body.len() >= 188 {
                assert_eq!(body, &data[..188]);
                break;
            }
        }
    }
    let head =
        String::from_utf8_lossy(&raw[..raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    // The rest comes in steps, then whole.
    for upto in [1000, 20_000, data.len() / 2, data.len()] {
        fake.verify_upto(upto);
        tokio::task::yield_now().await;
    }
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    raw.extend(rest);
    let answer = parse(&raw);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), data.len());
    assert!(answer.body == data, "the body is not the segment's bytes");
}

#[tokio::test(start_paused = true)]
async fn a_segment_whose_bytes_stop_ends_cleanly_with_what_was_verified() {
    let (fake, data) = stream_with_arriving(|_| 1000);
    let mut stream = connect(fake.clone());
    send(&mut stream, "/seg/2.ts").await;
    let answer = reply(stream).await;
    assert_eq!(answer.status, 200);
    // Five whole packets of the 1000 bytes; the body ended with its last chunk.
    assert_eq!(answer.body, &data[..5 * 188]);

    // Given up while a player reads it: the body ends too.
    let (fake, data) = stream_with_arriving(|_| 500);
    let mut stream = connect(fake.clone());
    send(&mut stream, "/seg/2.ts").await;
    let reading = tokio::spawn(reply(stream));
    tokio::time::sleep(Duration::from_millis(10)).await;
    fake.give_up();
    let answer = reading.await.unwrap();
    assert_eq!(answer.body, &data[..2 * 188]);
    // Once given up, the segment is simply not there.
    let mut stream = connect(fake);
    send(&mut stream, "/seg/2.ts").await;
    assert_eq!(reply(stream).await.status, 404);
}
