//! Bounded twins of the cargo-fuzz targets in fuzz/: the same property
//! functions (fuzz/src/lib.rs, included below), driven by proptest from
//! mutated seeds, so `cargo test` checks what the fuzzers check. Also the
//! generator of the committed seed corpora, and a check that they are current.
// A failed unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod props;

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use starling::stream::{
    node_id, part_pieces, piece_range, sign_segment, NodeId, Ticket, MAX_TICKET_ADDRS, PARTS,
};
use starling::token::{Credential, Side, BINDING_LEN, TOKEN_PREFIX};
use starling::wire::{encode, Control, Hello, PeerInfo, Reply, Request, Role, PROTOCOL_VERSION};

const TARGETS: [&str; 5] = [
    "wire_control",
    "ticket",
    "segmenter",
    "token",
    "http_request",
];
const FIXTURES: [&str; 4] = ["h264", "hevc", "gop4s", "audio_only"];
/// How much of each fixture a segmenter seed holds.
const SEED_TS_BYTES: usize = 20_000;

/// Named seed inputs of one target.
type Seeds = Vec<(String, Vec<u8>)>;

// ---------------------------------------------------------------- seeds

/// Encoded frames of every message kind; a segment reply is followed by its data.
fn wire_seeds() -> Seeds {
    let key = SigningKey::from_bytes(&props::SEED_KEY);
    let stream = node_id(&key);
    let peer = |b: u8, addr: &str| PeerInfo {
        id: node_id(&SigningKey::from_bytes(&[b; 32])),
        addr: addr.parse().unwrap(),
        local: Some("192.168.0.2:4433".parse().unwrap()),
        reach: starling::wire::Reach::Nat,
        site: None,
    };
    let controls = [
        (
            "hello",
            Control::Hello(Box::new(Hello {
                version: PROTOCOL_VERSION,
                stream,
                role: Role::Broadcaster,
                uploads: true,
                upload_bps: Some(8_000_000),
                token: None,
                token_epoch: 0,
                observed: "203.0.113.7:4433".parse().unwrap(),
                local: None,
                public: None,
                reach: starling::wire::Reach::Nat,
                site: None,
            })),
        ),
        (
            "hello-private",
            Control::Hello(Box::new(Hello {
                version: PROTOCOL_VERSION,
                stream,
                role: Role::Viewer,
                uploads: false,
                upload_bps: None,
                token: Some(
                    seed_credential(3, 1_700_000_000, 1_800_000_000)
                        .prove(&[9; BINDING_LEN], Side::Dialler),
                ),
                token_epoch: 3,
                observed: "203.0.113.7:4433".parse().unwrap(),
                local: Some("10.1.0.12:4433".parse().unwrap()),
                public: Some("198.51.100.4:4433".parse().unwrap()),
                reach: starling::wire::Reach::Nat,
                site: Some(starling::wire::SiteTag::of(&stream, "head office")),
            })),
        ),
        (
            "have",
            Control::Have {
                number: 1234,
                parts: 0b1011,
            },
        ),
        (
            "buffermap",
            Control::BufferMap {
                first: 1000,
                bits: vec![0xFF, 0x7F, 0x01, 0x80],
            },
        ),
        (
            "peers",
            Control::Peers {
                peers: vec![peer(1, "192.0.2.1:4433"), peer(2, "[2001:db8::1]:9000")],
            },
        ),
        ("end", Control::End { last: 99 }),
        (
            "swarm",
            Control::Swarm {
                upload_pct: 105,
                joining_pct: 40,
            },
        ),
        (
            "heard",
            Control::Heard {
                peer: NodeId([3; 32]),
                number: 1234,
                parts: 0b110,
            },
        ),
        ("quiet", Control::Quiet { on: true }),
    ];
    let mut out: Seeds = controls
        .iter()
        .map(|(name, m)| (format!("control-{name}"), encode(m).to_vec()))
        .collect();
    out.push((
        "control-stream".into(),
        controls
            .iter()
            .flat_map(|(_, m)| encode(m).to_vec())
            .collect(),
    ));
    // Two pieces: one whole, one short. The last part holds the short one.
    let data: Vec<u8> = (0..17_000u32).map(|i| (i % 251) as u8).collect();
    for (name, data) in [("segment", &data[..]), ("segment-empty", &[][..])] {
        let h = sign_segment(&key, 42, 2000, 1_700_000_000_000, false, data).unwrap();
        let part = PARTS - 1;
        let pieces = part_pieces(h.header.pieces.len(), part).unwrap();
        let mut bytes = encode(&Reply::Part {
            number: 42,
            part: part as u8,
            header: Some(h.clone()),
        })
        .to_vec();
        for i in pieces {
            let r = piece_range(h.header.len, h.header.piece_size, i).unwrap();
            bytes.extend_from_slice(&data[r]);
        }
        out.push((format!("reply-{name}"), bytes));
    }
    out.push((
        "reply-unavailable".into(),
        encode(&Reply::Unavailable).to_vec(),
    ));
    out.push(("reply-busy".into(), encode(&Reply::Busy).to_vec()));
    let req = Request {
        number: 7,
        part: 3,
        header: true,
        join: false,
    };
    out.push(("request".into(), encode(&req).to_vec()));
    out
}

/// Valid tickets: one address, both families, the most addresses allowed.
fn ticket_seeds() -> Seeds {
    let stream = node_id(&SigningKey::from_bytes(&props::SEED_KEY));
    let tickets = [
        ("v4", vec!["127.0.0.1:4433"]),
        ("mixed", vec!["192.0.2.7:4433", "[::1]:4433", "[fe80::1]:1"]),
        (
            "max",
            (0..MAX_TICKET_ADDRS).map(|_| "10.0.0.1:65535").collect(),
        ),
    ];
    tickets
        .into_iter()
        .map(|(name, addrs)| {
            let t = Ticket {
                stream,
                addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            };
            (format!("ticket-{name}"), t.encode().into_bytes())
        })
        .collect()
}

/// A credential of the seed key's stream, held by a fixed key (seeds must not change).
fn seed_credential(epoch: u32, not_before: u64, expires: u64) -> Credential {
    let key = SigningKey::from_bytes(&props::SEED_KEY);
    Credential::issue(
        &key,
        &SigningKey::from_bytes(&[8; 32]),
        epoch,
        not_before,
        expires,
    )
}

/// Valid credentials of the seed key: epoch 0, a later epoch, the widest window, the largest
/// values.
fn token_seeds() -> Seeds {
    [
        ("epoch0", 0, 1_699_000_000, 1_700_000_000),
        ("epoch7", 7, 1_700_000_000, 1_800_000_000),
        ("always", 1, 0, u64::MAX),
        ("max", u32::MAX, u64::MAX - 1, u64::MAX),
    ]
    .into_iter()
    .map(|(name, epoch, not_before, expires)| {
        let c = seed_credential(epoch, not_before, expires);
        (format!("token-{name}"), c.encode().into_bytes())
    })
    .collect()
}

/// The start of each fixture, behind a header: 0.5 s target; chunks of
/// 188, 49 and 1281 bytes.
fn segmenter_seeds() -> Seeds {
    FIXTURES
        .iter()
        .map(|name| {
            let ts = fixture(name);
            let mut bytes = vec![0, 187, 3, 20];
            bytes.extend_from_slice(&ts[..SEED_TS_BYTES.min(ts.len())]);
            (format!("ts-{name}"), bytes)
        })
        .collect()
}

/// Requests a player, a page and an attacker send: one each, pipelined, a granted
/// preflight, a foreign Host and a foreign Origin.
fn http_seeds() -> Seeds {
    let granted = props::HTTP_GRANTED_ORIGIN;
    [
        (
            "playlist",
            "GET /live.m3u8 HTTP/1.1\r\nHost: localhost:8080\r\n\r\n".to_owned(),
        ),
        (
            "pipelined",
            "HEAD /seg/1.ts HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n\
             GET /seg/1.ts HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n\
             GET /stats HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n"
                .to_owned(),
        ),
        (
            "preflight",
            format!(
                "OPTIONS /seg/1.ts HTTP/1.1\r\nHost: localhost\r\nOrigin: {granted}\r\n\
                 Access-Control-Request-Method: GET\r\n\r\n\
                 GET /seg/1.ts HTTP/1.1\r\nHost: localhost\r\nOrigin: {granted}\r\n\r\n"
            ),
        ),
        (
            "foreign-host",
            "GET /live.m3u8 HTTP/1.1\r\nHost: rebind.example:8080\r\n\r\n".to_owned(),
        ),
        (
            "foreign-origin",
            "GET /stats HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\n\r\n"
                .to_owned(),
        ),
    ]
    .into_iter()
    .map(|(name, text)| (format!("http-{name}"), text.into_bytes()))
    .collect()
}

fn seeds(target: &str) -> Seeds {
    match target {
        "wire_control" => wire_seeds(),
        "ticket" => ticket_seeds(),
        "segmenter" => segmenter_seeds(),
        "token" => token_seeds(),
        "http_request" => http_seeds(),
        other => panic!("no target {other}"),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join(format!("tests/fixtures/{name}.ts"))).unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir(target: &str) -> PathBuf {
    root().join("fuzz/corpus").join(target)
}

/// The committed seed files (`seed-*`) of a target, by name.
fn committed(dir: &Path) -> Seeds {
    let mut out: Seeds = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_prefix("seed-")?.to_owned();
            Some((name, std::fs::read(&p).unwrap()))
        })
        .collect();
    out.sort();
    out
}

/// Writes the seed corpora: `cargo test --test fuzz_twins -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand after changing the wire format or fixtures"]
fn write_fuzz_seeds() {
    for target in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, _) in committed(&dir) {
            std::fs::remove_file(dir.join(format!("seed-{name}"))).unwrap();
        }
        for (name, bytes) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

#[test]
fn committed_seeds_are_current() {
    let mut total = 0;
    for target in TARGETS {
        let mut want = seeds(target);
        want.sort();
        let have = committed(&corpus_dir(target));
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|s| s.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&have), names(&want), "{target}: seed files");
        for ((name, have), (_, want)) in have.iter().zip(&want) {
            assert!(
                have == want,
                "{target}/seed-{name} is stale: run \
                 `cargo test --test fuzz_twins -- --ignored write_fuzz_seeds`"
            );
            total += have.len();
        }
    }
    assert!(total < 1024 * 1024, "seed corpora hold {total} bytes");
}

#[test]
fn seeds_reach_the_interesting_paths() {
    // Wire: every seed decodes as its kind, and the segment reply verifies.
    for (name, bytes) in wire_seeds() {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        if name.starts_with("control") {
            let m = starling::wire::decode::<Control>(&mut buf, starling::wire::MAX_CONTROL_FRAME);
            assert!(matches!(m, Ok(Some(_))), "{name}");
        } else if name.starts_with("reply") {
            let m = starling::wire::decode::<Reply>(&mut buf, starling::wire::MAX_REPLY_FRAME);
            match m {
                Ok(Some(Reply::Part {
                    header: Some(h),
                    part,
                    ..
                })) => {
                    h.verify(&props::seed_stream()).unwrap();
                    let pieces = part_pieces(h.header.pieces.len(), part.into()).unwrap();
                    for i in pieces {
                        let r = piece_range(h.header.len, h.header.piece_size, i).unwrap();
                        h.check_piece(i, &buf.split_to(r.len())).unwrap();
                    }
                    assert!(buf.is_empty(), "{name}: the part's bytes, no more");
                }
                Ok(Some(_)) => {}
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    for (name, bytes) in ticket_seeds() {
        assert!(
            Ticket::decode(std::str::from_utf8(&bytes).unwrap()).is_ok(),
            "{name}"
        );
    }
    for (name, bytes) in token_seeds() {
        let c = Credential::decode(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let t = c.token();
        let before_expiry = t.expires_unix_s - 1;
        assert!(
            t.verify(&props::seed_stream(), t.epoch, before_expiry, 0)
                .is_ok(),
            "{name}"
        );
    }
    // HTTP: the player's and the page's requests are answered, the attacker's refused.
    for (name, bytes) in http_seeds() {
        let out = String::from_utf8_lossy(&props::http_exchange(&bytes)).into_owned();
        let want = match name.as_str() {
            "http-foreign-host" => "HTTP/1.1 421",
            "http-preflight" => "access-control-allow-origin: https://granted.example",
            _ => "HTTP/1.1 200",
        };
        assert!(out.contains(want), "{name}: {out}");
        if name == "http-pipelined" {
            assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{name}: {out}");
        }
    }
    // Segmenter: each fixture's start yields a segment.
    for (name, bytes) in segmenter_seeds() {
        let mut s = starling::ts::Segmenter::new(std::time::Duration::from_millis(500));
        let mut n = s.push(&bytes[props::SEGMENTER_HEADER..]).len();
        n += usize::from(s.finish().is_some());
        assert!(n >= 1, "{name}: no segment");
    }
}

/// Inputs that once failed a fuzz target (minimized), in
/// fuzz/regressions/<target>/: each must pass its target's checks now.
#[test]
fn fuzz_regressions_pass() {
    let mut found = 0;
    for target in TARGETS {
        let dir = root().join("fuzz/regressions").join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            match target {
                "wire_control" => props::wire_control(&data),
                "ticket" => props::ticket(&data),
                "token" => props::token(&data),
                "http_request" => props::http_request(&data),
                _ => props::segmenter(&data),
            }
            found += 1;
        }
    }
    assert!(found >= 1, "no regression inputs found");
}

// ---------------------------------------------------------------- mutation

/// One edit applied to a seed.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite the byte at (position modulo length).
    Set(usize, u8),
    /// Overwrite a byte near the start, where headers are.
    SetHead(u8, u8),
    /// Insert bytes at (position modulo length + 1).
    Insert(usize, Vec<u8>),
    /// Remove up to n bytes at (position modulo length).
    Remove(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Set(a, b)),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Edit::SetHead(a, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        1 => (any::<usize>(), 1..400usize).prop_map(|(a, n)| Edit::Remove(a, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        match e {
            Edit::Set(at, b) if !v.is_empty() => {
                let i = at % v.len();
                v[i] = *b;
            }
            Edit::SetHead(at, b) if !v.is_empty() => {
                let i = usize::from(*at) % v.len();
                v[i] = *b;
            }
            Edit::Insert(at, bytes) => {
                let i = at % (v.len() + 1);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Remove(at, n) if !v.is_empty() => {
                let i = at % v.len();
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            _ => {}
        }
    }
    v
}

/// A seed of `target` with a few edits.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds(target).len();
    (0..n, proptest::collection::vec(edit(), 0..6))
        .prop_map(move |(i, edits)| apply(&seeds_cached(target)[i].1, &edits))
}

/// Seeds built once per target (the segment seed signs, the TS seeds read files).
fn seeds_cached(target: &'static str) -> &'static [(String, Vec<u8>)] {
    use std::sync::OnceLock;
    static CACHE: [OnceLock<Seeds>; 5] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = TARGETS.iter().position(|t| *t == target).unwrap();
    CACHE[i].get_or_init(|| seeds(target))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn wire_control_twin(data in mutated("wire_control")) {
        props::wire_control(&data);
    }

    #[test]
    fn wire_control_twin_on_streams(a in mutated("wire_control"), b in mutated("wire_control")) {
        // Two (possibly broken) frames back to back.
        let mut data = a;
        data.extend_from_slice(&b);
        props::wire_control(&data);
    }

    #[test]
    fn wire_control_twin_on_noise(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        props::wire_control(&data);
    }

    #[test]
    fn ticket_twin(data in mutated("ticket")) {
        props::ticket(&data);
    }

    #[test]
    fn ticket_twin_on_base32(body in "[a-z2-7A-Z]{0,120}") {
        props::ticket(format!("starling1{body}").as_bytes());
    }

    #[test]
    fn http_request_twin(data in mutated("http_request")) {
        props::http_request(&data);
    }

    #[test]
    fn http_request_twin_on_noise(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        props::http_request(&data);
    }

    #[test]
    fn http_request_twin_on_request_lines(
        method in "(GET|HEAD|OPTIONS|POST|get|G\\x00T)",
        path in "(/|/live\\.m3u8|/seg/[0-9+-]{0,22}\\.ts|/stats|/metrics|/hls\\.min\\.js|[ -~]{0,40})",
        host in "(localhost|127\\.0\\.0\\.1|\\[::1\\]|rebind\\.example|[ -~]{0,30})(:[0-9]{0,6})?",
        origin in proptest::option::of("(https://granted\\.example|https://evil\\.example|null|[ -~]{0,30})"),
        version in "(HTTP/1\\.1|HTTP/1\\.0|HTTP/2\\.0|HTTP/1\\.1 )",
        repeat in 1..4usize,
    ) {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        let one = format!("{method} {path} {version}\r\nHost: {host}\r\n{origin}\r\n");
        props::http_request(one.repeat(repeat).as_bytes());
    }

    #[test]
    fn token_twin(data in mutated("token")) {
        props::token(&data);
    }

    #[test]
    fn token_twin_on_base32(body in "[a-z2-7A-Z]{0,320}") {
        props::token(format!("{TOKEN_PREFIX}{body}").as_bytes());
    }

    #[test]
    fn old_tokens_are_refused_as_old(body in "[a-z2-7]{0,200}") {
        props::token(format!("starlingtok1{body}").as_bytes());
    }

    #[test]
    fn generated_tokens_round_trip_and_verify(
        epoch in any::<u32>(),
        not_before in any::<u64>(),
        life in 1..u64::MAX,
        holder in any::<[u8; 32]>(),
        binding in any::<[u8; BINDING_LEN]>(),
        pad in "[ \t\n]{0,3}",
    ) {
        let key = SigningKey::from_bytes(&props::SEED_KEY);
        let expires = not_before.saturating_add(life);
        prop_assume!(not_before < expires);
        let c = Credential::issue(&key, &SigningKey::from_bytes(&holder), epoch, not_before, expires);
        let text = format!("{pad}{}{pad}", c.encode());
        let back = Credential::decode(&text).unwrap();
        prop_assert_eq!(&back, &c);
        let seed = props::seed_stream();
        prop_assert!(back.token().verify(&seed, epoch, expires - 1, 0).is_ok());
        prop_assert!(back.token().verify(&seed, epoch, not_before, 0).is_ok());
        let proof = back.prove(&binding, Side::Acceptor);
        prop_assert!(proof.verify(&seed, epoch, not_before, 0, &binding, Side::Acceptor).is_ok());
        props::token(text.as_bytes());
    }

    #[test]
    fn generated_tickets_round_trip(
        key in any::<[u8; 32]>(),
        addrs in proptest::collection::vec(any::<std::net::SocketAddr>(), 1..=MAX_TICKET_ADDRS),
        pad in "[ \t\n]{0,3}",
    ) {
        // std's serde form of a v6 address drops flow info and scope id.
        let addrs: Vec<_> = addrs
            .into_iter()
            .map(|a| std::net::SocketAddr::new(a.ip(), a.port()))
            .collect();
        let t = Ticket { stream: node_id(&SigningKey::from_bytes(&key)), addrs };
        let text = format!("{pad}{}{pad}", t.encode());
        prop_assert_eq!(Ticket::decode(&text).unwrap(), t);
        props::ticket(text.as_bytes());
    }
}

proptest! {
    // Each case segments ~20 KB six times over: fewer cases keep this quick.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn segmenter_twin(data in mutated("segmenter")) {
        props::segmenter(&data);
    }

    #[test]
    fn segmenter_twin_on_slices(
        header in any::<[u8; 4]>(),
        which in 0..FIXTURES.len(),
        start in 0..4000usize,
        len in 0..12_000usize,
    ) {
        // An unaligned start makes the framer resync; any header is allowed.
        let seed = &seeds_cached("segmenter")[which].1[props::SEGMENTER_HEADER..];
        let start = start.min(seed.len());
        let end = (start + len).min(seed.len());
        let mut data = header.to_vec();
        data.extend_from_slice(&seed[start..end]);
        props::segmenter(&data);
    }
}
