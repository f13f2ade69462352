//! The properties the fuzz targets check, one function per target.
//!
//! Each takes the raw fuzz input and panics when a property fails. The
//! libFuzzer targets in fuzz_targets/ call them; tests/fuzz_twins.rs includes
//! this file and runs the same checks on a bounded number of proptest cases.

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use ed25519_dalek::SigningKey;
use serde::{de::DeserializeOwned, Serialize};
use starling::stream::{
    node_id, piece_range, NodeId, SignedHeader, StreamId, Ticket, MAX_TICKET_ADDRS,
    MAX_TICKET_TEXT, TICKET_PREFIX,
};
use starling::token::{
    Credential, Side, TokenError, BINDING_LEN, MAX_TOKEN_TEXT, OLD_TOKEN_PREFIX, TOKEN_PREFIX,
};
use starling::ts::MAX_SEGMENT_DURATION;
use starling::ts::{pts_span, CutSegment, Restamper, Segmenter, MAX_SEGMENT_BYTES};
use starling::wire::{
    self, Control, Reply, Request, WireError, MAX_CONTROL_FRAME, MAX_REPLY_FRAME, MAX_REQUEST_FRAME,
};

/// Secret key that signed the wire seeds: headers are verified against its
/// id, so mutations of the seeds reach the checks after a good signature.
pub const SEED_KEY: [u8; 32] = [7; 32];

/// Bytes before the TS data in a segmenter input: the target duration, then
/// three chunk-size bytes.
pub const SEGMENTER_HEADER: usize = 4;

const PACKET_LEN: usize = 188;
/// PTS/DTS/PCR are 33-bit counters.
const TS_MOD: u64 = 1 << 33;

/// The id of [`SEED_KEY`] (computed once: deriving a public key is not free).
pub fn seed_stream() -> StreamId {
    static ID: OnceLock<StreamId> = OnceLock::new();
    *ID.get_or_init(|| node_id(&SigningKey::from_bytes(&SEED_KEY)))
}

// ---------------------------------------------------------------- wire

/// `wire_control`: decodes the input as a control stream (frames back to
/// back), as a transfer reply followed by segment bytes, and as a request.
///
/// Properties: decoding never panics; "incomplete" consumes nothing; an
/// oversize error names a length above the limit; every decoded message
/// re-encodes within its frame limit and decodes back to itself; a header
/// that verifies and whose whole data checks also checks piece by piece.
pub fn wire_control(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match wire::decode::<Control>(&mut buf, MAX_CONTROL_FRAME) {
            Ok(Some(m)) => {
                assert!(buf.len() + 4 <= before, "a frame consumes its prefix");
                let _ = m.validate();
                round_trip(&m, MAX_CONTROL_FRAME);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "nothing consumed while incomplete");
                break;
            }
            Err(WireError::Oversize { len, max }) => {
                assert!(len > max, "oversize {len} <= {max}");
                assert_eq!(buf.len(), before, "an oversize prefix is not consumed");
                break;
            }
            Err(_) => break,
        }
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Some(reply)) = wire::decode::<Reply>(&mut buf, MAX_REPLY_FRAME) {
        round_trip(&reply, MAX_REPLY_FRAME);
        if let Reply::Part {
            header: Some(h), ..
        } = &reply
        {
            check_header(h, &buf);
        }
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Some(req)) = wire::decode::<Request>(&mut buf, MAX_REQUEST_FRAME) {
        round_trip(&req, MAX_REQUEST_FRAME);
        let _ = req.validate();
    }
}

/// What we decoded we can send again, and it means the same.
fn round_trip<T>(m: &T, max: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Clone,
{
    let frame = wire::encode(m);
    assert!(
        frame.len() <= 4 + max,
        "{m:?} re-encodes to {} bytes, over the {max}-byte limit",
        frame.len()
    );
    let mut buf = BytesMut::from(&frame[..]);
    assert_eq!(wire::decode::<T>(&mut buf, max), Ok(Some(m.clone())));
    assert!(buf.is_empty(), "re-encoded frame left bytes over");
}

/// Runs a peer's header and the bytes after it through every check a
/// receiver makes; none may panic, and they must agree with each other.
fn check_header(h: &SignedHeader, rest: &[u8]) {
    let verified = h.verify(&seed_stream()).is_ok();
    if let Some(key) = rest.get(..32).and_then(|k| <[u8; 32]>::try_from(k).ok()) {
        let _ = h.verify(&NodeId(key));
    }
    let hd = &h.header;
    let whole = rest.get(..hd.len as usize);
    let data_ok = whole.is_some_and(|d| h.check_data(d).is_ok());
    let _ = h.check_data(rest);
    assert!(h.check_piece(usize::MAX, rest).is_err());
    assert!(h.check_piece(hd.pieces.len(), &[]).is_err());
    for i in 0..hd.pieces.len() {
        let range = piece_range(hd.len, hd.piece_size, i);
        let piece = range.clone().and_then(|r| rest.get(r)).unwrap_or(rest);
        let ok = h.check_piece(i, piece).is_ok();
        if ok {
            assert_eq!(range.map(|r| r.len()), Some(piece.len()));
        }
        if verified && data_ok {
            assert!(ok, "piece {i} of a verified segment with good data fails");
        }
    }
}

// ---------------------------------------------------------------- ticket

/// `ticket`: parses the input (lossy UTF-8) as a ticket.
///
/// Properties: parsing never panics; a ticket that parses has 1 to
/// [`MAX_TICKET_ADDRS`] addresses and a stream key that is a valid point not
/// of small order, came from at most [`MAX_TICKET_TEXT`] characters, and is
/// canonical: encoding it gives exactly the trimmed input, which parses back
/// to the same ticket.
pub fn ticket(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(t) = Ticket::decode(&text) else { return };
    assert!(!t.addrs.is_empty() && t.addrs.len() <= MAX_TICKET_ADDRS);
    assert!(t.stream.verifying_key().is_some_and(|k| !k.is_weak()));
    assert!(text.trim().len() <= MAX_TICKET_TEXT);
    let again = t.encode();
    assert!(again.starts_with(TICKET_PREFIX));
    assert_eq!(again, text.trim(), "a ticket with two texts");
    match Ticket::decode(&again) {
        Ok(back) => assert_eq!(back, t),
        Err(e) => panic!("{again:?} from {text:?} does not parse again: {e}"),
    }
}

// ---------------------------------------------------------------- token

/// `token`: join credential strings a user pastes (lossy UTF-8 of the input).
///
/// Properties: decoding never panics; a version-1 token is refused as such;
/// a credential that parses names a valid stream key not of small order,
/// holds the secret of the holder its token names, came from at most
/// [`MAX_TOKEN_TEXT`] characters, and is canonical: it re-encodes to exactly
/// the trimmed input, which parses back to itself. `verify` never panics and
/// agrees with the dates: never valid before the start or at or after expiry,
/// never valid below the minimum epoch, never valid for another stream. A
/// proof it makes holds on the connection and side it was made for (when the
/// token is valid) and never on another exporter or the other side.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let decoded = Credential::decode(&text);
    if text.trim().starts_with(OLD_TOKEN_PREFIX) {
        assert_eq!(decoded, Err(TokenError::OldFormat));
    }
    let Ok(c) = decoded else {
        return;
    };
    let t = *c.token();
    assert!(text.trim().len() <= MAX_TOKEN_TEXT);
    assert!(t.stream.verifying_key().is_some_and(|k| !k.is_weak()));
    let again = c.encode();
    assert!(again.starts_with(TOKEN_PREFIX));
    assert_eq!(again, text.trim(), "a token with two texts");
    match Credential::decode(&again) {
        Ok(back) => assert_eq!(back, c),
        Err(e) => panic!("{again:?} from {text:?} does not parse again: {e}"),
    }
    let seed = seed_stream();
    let now = t.expires_unix_s.saturating_sub(1);
    let valid = t.verify(&seed, t.epoch, now, 0);
    if t.stream != seed {
        assert_eq!(valid, Err(TokenError::WrongStream));
    }
    assert!(t.verify(&seed, 0, t.expires_unix_s, 0).is_err());
    if let Some(before) = t.not_before_unix_s.checked_sub(1) {
        assert!(t.verify(&seed, 0, before, 0).is_err());
    }
    if let Some(newer) = t.epoch.checked_add(1) {
        assert!(t.verify(&seed, newer, now, 0).is_err());
    }
    let _ = t.verify(&t.stream, 0, 0, u64::MAX);
    let here = [data.len() as u8; BINDING_LEN];
    let mut elsewhere = here;
    elsewhere[0] ^= 1;
    let proof = c.prove(&here, Side::Dialler);
    assert!(proof
        .verify(&seed, 0, now, 0, &elsewhere, Side::Dialler)
        .is_err());
    if valid.is_ok() {
        assert!(t.stream == seed && t.not_before_unix_s <= now && now < t.expires_unix_s);
        let shown =
            |binding: &[u8; BINDING_LEN], side| proof.verify(&seed, t.epoch, now, 0, binding, side);
        assert_eq!(shown(&here, Side::Dialler), Ok(()));
        assert_eq!(shown(&elsewhere, Side::Dialler), Err(TokenError::Unbound));
        assert_eq!(shown(&here, Side::Acceptor), Err(TokenError::Unbound));
        let back = Credential::decode(&again).map(|b| b.token().verify(&seed, t.epoch, now, 0));
        assert_eq!(back, Ok(Ok(())));
    }
}

// ---------------------------------------------------------------- segmenter

/// `segmenter`: input = [`SEGMENTER_HEADER`] bytes (target, chunk sizes)
/// then MPEG-TS bytes, segmented twice over (input again after `finish`).
///
/// Properties: nothing panics; feeding the input in chunks gives exactly
/// the segments one push gives; every segment is whole packets, starts with
/// the PAT and then a PMT the PAT lists, has a PTS and a duration in
/// (0, [`MAX_SEGMENT_DURATION`]], and fits the size cap (also a small cap
/// taken from the input); restamping by an offset and back equals
/// restamping by 0, which only renumbers continuity counters; a restamped
/// segment's PTS span moves by the offset.
pub fn segmenter(data: &[u8]) {
    let Some((&[t, c0, c1, c2], ts)) = data.split_first_chunk::<SEGMENTER_HEADER>() else {
        return;
    };
    let target = Duration::from_millis(500 + u64::from(t) * 9500 / 255);
    let chunks = [
        usize::from(c0) + 1,
        usize::from(c1) * 16 + 1,
        usize::from(c2) * 64 + 1,
    ];

    let whole = run(ts, target, MAX_SEGMENT_BYTES, None);
    let chunked = run(ts, target, MAX_SEGMENT_BYTES, Some(chunks));
    assert_eq!(whole.seen, chunked.seen, "packets seen depend on chunking");
    assert_eq!(whole.dropped, chunked.dropped);
    assert_eq!(whole.segments.len(), chunked.segments.len());
    for (a, b) in whole.segments.iter().zip(&chunked.segments) {
        assert_eq!(a.data, b.data, "segment bytes depend on chunking");
        assert_eq!(a.duration, b.duration);
        assert_eq!(a.first_pts, b.first_pts);
    }
    for seg in &whole.segments {
        check_segment(seg, MAX_SEGMENT_BYTES);
    }

    // A cap of a few packets exercises dropping and the tail rules.
    let cap = PACKET_LEN * (4 + usize::from(c1 % 64));
    for seg in run(ts, target, cap, Some(chunks)).segments {
        check_segment(&seg, cap);
    }

    if let Some((a, b)) = pts_span(ts) {
        assert!(a < TS_MOD && b < TS_MOD);
    }
    let offset = (u64::from(u32::from_be_bytes([t, c0, c1, c2])) * 3) % TS_MOD;
    check_restamp(ts, offset);
    for seg in whole.segments.iter().take(4) {
        let shifted = check_restamp(&seg.data, offset);
        let zero = restamped(&seg.data, 0);
        let want = pts_span(&zero).map(|(a, b)| ((a + offset) % TS_MOD, (b + offset) % TS_MOD));
        assert_eq!(
            pts_span(&shifted),
            want,
            "span does not move with the offset"
        );
    }
}

/// What one segmenter run produced.
struct Run {
    segments: Vec<CutSegment>,
    seen: u64,
    dropped: u64,
}

/// Segments `ts` twice (the segmenter is reused after `finish`), in one
/// push or in chunks cycling through the given sizes.
fn run(ts: &[u8], target: Duration, cap: usize, chunks: Option<[usize; 3]>) -> Run {
    let mut s = Segmenter::with_max_segment_bytes(target, cap);
    let mut segments = Vec::new();
    for _pass in 0..2 {
        match chunks {
            None => segments.extend(s.push(ts)),
            Some(sizes) => {
                let mut rest = ts;
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (now, later) = rest.split_at((*size).min(rest.len()));
                    segments.extend(s.push(now));
                    rest = later;
                }
            }
        }
        segments.extend(s.finish());
    }
    Run {
        segments,
        seen: s.packets_seen(),
        dropped: s.segments_dropped(),
    }
}

fn pid(p: &[u8]) -> u16 {
    (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2])
}

fn pusi(p: &[u8]) -> bool {
    p[1] & 0x40 != 0
}

fn payload(p: &[u8]) -> &[u8] {
    if p[3] & 0x10 == 0 {
        return &[];
    }
    let start = if p[3] & 0x20 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    p.get(start..).unwrap_or(&[])
}

/// CRC-32/MPEG-2, bit by bit (independent of the library's table).
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The invariants every emitted segment keeps.
fn check_segment(seg: &CutSegment, cap: usize) {
    let d = &seg.data[..];
    assert!(
        d.len() <= cap,
        "segment of {} bytes over the {cap}-byte cap",
        d.len()
    );
    assert!(d.len() <= MAX_SEGMENT_BYTES);
    assert_eq!(d.len() % PACKET_LEN, 0, "segment is not whole packets");
    let packets: Vec<&[u8]> = d.chunks_exact(PACKET_LEN).collect();
    assert!(
        packets.iter().all(|p| p[0] == 0x47),
        "packet without sync byte"
    );
    assert!(
        seg.first_pts.is_some_and(|p| p < TS_MOD),
        "{:?}",
        seg.first_pts
    );
    assert!(
        !seg.duration.is_zero() && seg.duration <= MAX_SEGMENT_DURATION,
        "duration {:?}",
        seg.duration
    );

    // The PAT comes first, starting a section at once (pointer field 0).
    let Some(first) = packets.first() else {
        panic!("empty segment");
    };
    assert_eq!(pid(first), 0, "first packet is not the PAT");
    assert!(pusi(first));
    let head = payload(first);
    assert_eq!(head.first(), Some(&0), "PAT pointer field");
    let mut section = head.get(1..).unwrap_or(&[]).to_vec();
    assert_eq!(section.first(), Some(&0x00), "PAT table id");
    let total = match section.get(1..3) {
        Some(&[hi, lo]) => 3 + ((usize::from(hi & 0x0F) << 8) | usize::from(lo)),
        _ => panic!("PAT section header cut short"),
    };
    assert!((12..=1024).contains(&total), "PAT section length {total}");
    let mut next = 1;
    while section.len() < total {
        let Some(p) = packets.get(next) else {
            panic!("segment ends inside the PAT");
        };
        assert_eq!(pid(p), 0, "PAT continues on another PID");
        assert!(!pusi(p));
        section.extend_from_slice(payload(p));
        next += 1;
    }
    section.truncate(total);
    assert_eq!(crc32_mpeg2(&section), 0, "PAT CRC");
    let pmt_pids: Vec<u16> = section[8..total - 4]
        .chunks_exact(4)
        .filter(|e| e[0] != 0 || e[1] != 0)
        .map(|e| (u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]))
        .collect();

    // Then a PMT, on a PID the PAT names.
    let Some(pmt) = packets.get(next) else {
        panic!("segment ends after the PAT");
    };
    assert!(
        pmt_pids.contains(&pid(pmt)),
        "second table on PID {:#x}, PAT lists {pmt_pids:x?}",
        pid(pmt)
    );
    assert!(pusi(pmt));
    assert_eq!(payload(pmt).get(..2), Some(&[0u8, 0x02][..]), "PMT start");
}

/// A copy of `data` restamped by `offset` with a fresh [`Restamper`].
fn restamped(data: &[u8], offset: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut r = Restamper::new();
    r.set_offset(offset);
    r.apply(&mut out);
    out
}

/// Restamping by `offset` and back equals restamping by 0, which changes
/// only continuity counters. Returns the copy restamped by `offset`.
fn check_restamp(data: &[u8], offset: u64) -> Vec<u8> {
    let zero = restamped(data, 0);
    assert_eq!(zero.len(), data.len());
    for (i, (a, b)) in data.iter().zip(&zero).enumerate() {
        if i % PACKET_LEN == 3 {
            assert_eq!(a & 0xF0, b & 0xF0, "restamp by 0 changed byte {i}");
        } else {
            assert_eq!(a, b, "restamp by 0 changed byte {i}");
        }
    }
    let shifted = restamped(data, offset);
    let back = restamped(&shifted, (TS_MOD - offset) % TS_MOD);
    assert!(
        back == zero,
        "restamping by {offset} and back is not the identity"
    );
    shifted
}

// ---------------------------------------------------------------- http

/// The origin the `http_request` target's server grants; no other may appear in a response.
pub const HTTP_GRANTED_ORIGIN: &str = "https://granted.example";

/// Largest input the `http_request` target feeds the server (more only repeats the same
/// paths through hyper's 32 KiB read buffer).
const HTTP_MAX_INPUT: usize = 64 * 1024;

/// A fixed catalog: segment 1 exists (bytes that cannot be mistaken for a response head).
struct HttpCatalog;

impl starling::http::Catalog for HttpCatalog {
    fn index_html(&self) -> &'static str {
        "<!doctype html><title>page</title>"
    }
    fn playlist(&self) -> Option<String> {
        Some("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nseg/1.ts\n".to_owned())
    }
    fn segment(&self, number: u64) -> Option<bytes::Bytes> {
        (number == 1).then(|| bytes::Bytes::from(vec![0x47; 188 * 20]))
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
}

/// `http_request`: the input is what a client sends the local HTTP server on one
/// connection (listening on 127.0.0.1:8080, granting [`HTTP_GRANTED_ORIGIN`]).
///
/// Properties: the server never panics and ends the connection in bounded (virtual) time;
/// what it sends starts with an HTTP/1.x status line; every `Access-Control-Allow-Origin` it
/// sends names the granted origin, and only when the input carries that origin; no 200 is
/// sent unless the input names a loopback host (`localhost`, `127.`, or a bracketed address).
pub fn http_request(data: &[u8]) {
    let data = &data[..data.len().min(HTTP_MAX_INPUT)];
    let output = http_exchange(data);
    if output.is_empty() {
        return;
    }
    assert!(
        output.starts_with(b"HTTP/1.1 ") || output.starts_with(b"HTTP/1.0 "),
        "not a status line: {:?}",
        String::from_utf8_lossy(&output[..output.len().min(64)])
    );
    let input = String::from_utf8_lossy(data).to_ascii_lowercase();
    let text = String::from_utf8_lossy(&output).to_ascii_lowercase();
    let mut granted_seen = false;
    for line in text.split("\r\n") {
        if let Some(value) = line.strip_prefix("access-control-allow-origin:") {
            assert_eq!(
                value.trim(),
                HTTP_GRANTED_ORIGIN,
                "a grant to another origin"
            );
            granted_seen = true;
        }
    }
    if granted_seen {
        assert!(
            input.contains(HTTP_GRANTED_ORIGIN),
            "a grant nobody asked for"
        );
    }
    let loopback_named =
        input.contains("localhost") || input.contains("127.") || input.contains('[');
    if !loopback_named {
        assert!(
            !text.contains("http/1.1 200") && !text.contains("http/1.0 200"),
            "200 without a loopback Host: {input:?}"
        );
    }
}

/// Sends `data` to the `http_request` target's server on one connection and returns all it
/// answered before closing. Panics if the server panics or keeps the connection open past
/// 600 s of virtual time.
pub fn http_exchange(data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Virtual time: the idle and stall timeouts pass at once when nothing else can run.
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let granted = HTTP_GRANTED_ORIGIN.parse().expect("a valid origin");
        let config =
            starling::http::ServeConfig::granting(starling::http::CrossOrigin::granted(vec![
                granted,
            ]));
        let local = "127.0.0.1:8080".parse().expect("an address");
        let serving = tokio::spawn(starling::http::serve_stream(
            server,
            local,
            std::sync::Arc::new(HttpCatalog),
            config,
        ));
        let (mut reader, mut writer) = tokio::io::split(client);
        let write = async move {
            // The server may close before reading it all.
            let _ = writer.write_all(data).await;
            writer
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
            out
        };
        let ended = tokio::time::timeout(Duration::from_secs(600), async {
            let (_writer, out) = tokio::join!(write, read);
            out
        })
        .await;
        let out = ended.expect("the server ends the connection within 600 s of virtual time");
        match serving.await {
            Ok(()) => {}
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the connection task failed: {e}"),
        }
        out
    })
}
