//! Private streams: only holders of a valid join token get in, at the tracker and at every
//! viewer, before a byte of media moves. In-process nodes over real QUIC first, then the
//! real programs as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod harness;

use bytes::Bytes;
use common::evil;
use common::nodes::{
    broadcaster_config, dial_with_hello, publish, shutdown_all, viewer_config, wait_for, Dialled,
};
use ed25519_dalek::SigningKey;
use starling::clock::unix_now_s;
use starling::mesh::MeshConfig;
use starling::net::Node;
use starling::node::hello::TOKEN_CLOCK_SKEW_S;
use starling::stream::{node_id, NodeId};
use starling::token::{Admission, Credential, TokenError, TokenProof};
use starling::wire::{Control, PeerInfo, Reach};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const SEGMENT: Duration = Duration::from_millis(500);
/// Generous: a shared, busy machine.
const WAIT: Duration = Duration::from_secs(30);

fn payload(n: u64) -> Bytes {
    common::payload::payload(n, 40_000)
}

fn stream_key() -> SigningKey {
    SigningKey::from_bytes(&[71; 32])
}

/// A credential of `stream_key()`'s stream at `epoch`, valid from `from` to `until`
/// (Unix seconds), held by a fresh key.
fn credential(key: &SigningKey, epoch: u32, from: u64, until: u64) -> Credential {
    let holder = SigningKey::generate(&mut rand::rngs::OsRng);
    Credential::issue(key, &holder, epoch, from, until)
}

/// A credential of `stream_key()`'s stream at `epoch`, valid for an hour from now.
fn good_token(epoch: u32) -> Credential {
    let now = unix_now_s();
    credential(&stream_key(), epoch, now, now + 3600)
}

async fn private_broadcaster(epoch: u32) -> Node {
    let mut config = broadcaster_config(&stream_key(), SEGMENT, None, 1);
    config.admission = Admission::Broadcaster { epoch };
    Node::spawn(config).await.unwrap()
}

async fn invited_viewer(origin: &Node, seed: u8, admission: Admission) -> Node {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let mesh = MeshConfig::viewer(origin.id(), SEGMENT, 2);
    let mut config = viewer_config(key, origin, mesh, u64::from(seed));
    config.admission = admission;
    Node::spawn(config).await.unwrap()
}

/// The node's QUIC address on loopback.
fn addr_of(node: &Node) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], node.local_addr().unwrap().port()))
}

/// What a node did with a Hello we sent it.
#[derive(Debug)]
enum Answer {
    /// It sent its own Hello back: we are in.
    Admitted,
    /// It closed the connection with this code and reason, and sent us nothing else.
    Refused(u64, String),
}

/// What a knocking peer shows in its Hello.
#[derive(Debug, Clone)]
enum Shown {
    /// No token.
    Nothing,
    /// The credential's token, proven on the connection it knocks on.
    Proven(Credential),
    /// A proof made elsewhere (copied).
    Copied(TokenProof),
}

/// Dials `target` as a viewer of `stream` showing `shown`, and reports the answer. When
/// refused, also checks that no stream (no Have, no pushed segment) ever reached us.
async fn knock(target: &Node, stream: NodeId, shown: &Shown) -> Answer {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let Dialled {
        endpoint,
        conn,
        send: _send,
        mut recv,
    } = dial_with_hello(&key, target.id(), addr_of(target), |conn| {
        let token = match shown {
            Shown::Nothing => None,
            Shown::Proven(cred) => Some(evil::proof_on(conn, cred)),
            Shown::Copied(proof) => Some(*proof),
        };
        evil::hello_showing(stream, token)
    })
    .await;
    let mut prefix = [0u8; 4];
    let answer = match tokio::time::timeout(WAIT, recv.read_exact(&mut prefix)).await {
        Ok(Ok(())) => Answer::Admitted,
        Ok(Err(_)) => match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => Answer::Refused(
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("the connection failed another way: {other:?}"),
        },
        Err(_) => panic!("no answer to our Hello within {WAIT:?}"),
    };
    if let Answer::Refused(..) = answer {
        assert!(
            conn.accept_uni().await.is_err() && conn.accept_bi().await.is_err(),
            "a refused peer was offered a stream"
        );
        let received = conn.stats().frame_rx.stream;
        assert_eq!(received, 0, "a refused peer got {received} stream frames");
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    answer
}

fn assert_refused(answer: Answer, code: u64, words: &str, who: &str) {
    match answer {
        Answer::Refused(c, reason) => {
            assert_eq!(c, code, "{who}: close code (reason {reason:?})");
            assert!(reason.contains(words), "{who}: reason {reason:?}");
        }
        Answer::Admitted => panic!("{who} admitted a peer it should refuse"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invited_viewers_play_and_everyone_else_is_refused_by_tracker_and_viewer() {
    let stream = node_id(&stream_key());
    let origin = private_broadcaster(1).await;
    let viewer = invited_viewer(&origin, 72, Admission::Invited(good_token(1))).await;
    for n in 0..3 {
        publish(&origin, &stream_key(), n, SEGMENT, payload(n)).await;
        tokio::time::sleep(SEGMENT).await;
    }
    let nodes = [viewer];
    let got_all = wait_for(&nodes, WAIT, |s| (0..3).all(|n| s.contains(n))).await;
    let [viewer] = nodes;
    assert!(got_all, "the invited viewer did not get the segments");
    assert_eq!(viewer.segment_data(2), Some(payload(2)));

    let other_key = SigningKey::from_bytes(&[73; 32]);
    let now = unix_now_s();
    let mut forged = evil::proof_on(&origin_probe(&origin).await, &good_token(1));
    forged.token.expires_unix_s += 1;
    let cases = [
        ("no token", Shown::Nothing, 6, "private"),
        (
            "an expired token",
            // Past its expiry by more than the clock-skew tolerance.
            Shown::Proven(credential(
                &stream_key(),
                1,
                now - 7200,
                now - 1 - TOKEN_CLOCK_SKEW_S,
            )),
            8,
            "expired",
        ),
        (
            "a token not valid yet",
            // Its start beyond the clock-skew tolerance.
            Shown::Proven(credential(
                &stream_key(),
                1,
                now + 10 + TOKEN_CLOCK_SKEW_S,
                now + 7200,
            )),
            11,
            "not valid yet",
        ),
        (
            "another stream's token",
            Shown::Proven(credential(&other_key, 1, now, now + 3600)),
            10,
            "another stream",
        ),
        (
            "a revoked token",
            Shown::Proven(good_token(0)),
            9,
            "revoked",
        ),
        ("an altered token", Shown::Copied(forged), 7, "signature"),
        (
            "a token proven on another connection",
            Shown::Copied(evil::proof_on(&origin_probe(&origin).await, &good_token(1))),
            12,
            "copied",
        ),
    ];
    for (what, shown, code, words) in &cases {
        let at_tracker = knock(&origin, stream, shown).await;
        assert_refused(at_tracker, *code, words, &format!("tracker, {what}"));
        let at_viewer = knock(&viewer, stream, shown).await;
        assert_refused(at_viewer, *code, words, &format!("viewer, {what}"));
    }
    // The same door opens for a valid token: the refusals above were about the tokens. A
    // token whose start is within the skew tolerance is valid already.
    let soon = credential(&stream_key(), 1, now + TOKEN_CLOCK_SKEW_S / 2, now + 3600);
    for shown in [Shown::Proven(good_token(1)), Shown::Proven(soon)] {
        assert!(matches!(
            knock(&viewer, stream, &shown).await,
            Answer::Admitted
        ));
    }
    assert!(matches!(
        knock(&origin, stream, &Shown::Proven(good_token(2))).await,
        Answer::Admitted
    ));
    shutdown_all([origin, viewer]).await;
}

/// A connection to the broadcaster that sends nothing: only its exporter is used, to make
/// a proof that belongs to it and to no other connection.
async fn origin_probe(origin: &Node) -> quinn::Connection {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let endpoint = starling::tls::endpoint(&key, common::nodes::loopback()).unwrap();
    evil::handshake(&endpoint, &key, origin.id(), addr_of(origin))
        .await
        .unwrap()
}

/// The attack of issue 30: an admitted member collects the tokens of the viewers it meets
/// (it connects to them, and it hands out in peer exchange a fake peer at an address it
/// controls, which they dial), then shows them elsewhere. What it collects are real,
/// longer-lived tokens than its own, each with a proof bound to the connection it came on:
/// the broadcaster and the viewer refuse every one as a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_of_tokens_gets_nothing_usable() {
    let stream = node_id(&stream_key());
    let origin = private_broadcaster(1).await;
    let now = unix_now_s();
    let victim_cred = credential(&stream_key(), 1, now, now + 7 * 86_400);
    let victim = invited_viewer(&origin, 80, Admission::Invited(victim_cred.clone())).await;
    publish(&origin, &stream_key(), 0, SEGMENT, payload(0)).await;
    let nodes = [victim];
    assert!(wait_for(&nodes, WAIT, |s| s.contains(0)).await);
    let [victim] = nodes;

    // The collector: a member with a token of one minute, and a fake peer of its own.
    let member_cred = credential(&stream_key(), 1, now, now + 60);
    let member_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let fake_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let fake = evil::Collector::start(&fake_key);
    let (mut member, victim_hello) = evil::Evil::connect_invited(
        &member_key,
        victim.id(),
        addr_of(&victim),
        stream,
        &member_cred,
    )
    .await
    .expect("the member is admitted");
    let mut collected: Vec<TokenProof> = victim_hello.token.into_iter().collect();
    member
        .control(&Control::Peers {
            peers: vec![PeerInfo {
                id: node_id(&fake_key),
                addr: SocketAddr::from(([127, 0, 0, 1], fake.local_addr().port())),
                local: None,
                reach: Reach::Public,
                site: None,
            }],
        })
        .await;
    let dialled = poll_for(|| fake.collected().first().cloned()).await;
    let dialled = dialled.expect("the victim never dialled the fake peer");
    collected.extend(dialled.token);
    assert_eq!(collected.len(), 2, "the victim showed its token both ways");

    for proof in collected {
        // What was collected is the victim's real token, valid for days.
        assert_eq!(proof.token, *victim_cred.token());
        assert_eq!(proof.token.verify(&stream, 1, unix_now_s(), 0), Ok(()));
        assert!(proof.token.expires_unix_s > member_cred.token().expires_unix_s);
        let shown = Shown::Copied(proof);
        for (who, target) in [("broadcaster", &origin), ("victim", &victim)] {
            let answer = knock(target, stream, &shown).await;
            assert_refused(answer, 12, "copied", &format!("{who}, a collected token"));
        }
    }
    // The victim itself kept its place: the collector cost it nothing.
    assert_eq!(victim.origin_refused(), None);
    drop(member);
    shutdown_all([origin, victim]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_without_a_token_learns_the_stream_is_private() {
    let origin = private_broadcaster(0).await;
    let viewer = invited_viewer(&origin, 74, Admission::Open).await;
    publish(&origin, &stream_key(), 0, SEGMENT, payload(0)).await;
    let refusal = poll_for(|| viewer.origin_refused()).await;
    assert_eq!(refusal, Some(TokenError::Missing));
    assert!(viewer.segment_data(0).is_none());
    assert_eq!(starling::net::get(&viewer.counters().bytes_from_origin), 0);
    shutdown_all([origin, viewer]).await;
}

/// Rotating the epoch on a running broadcaster drops connected holders of older tokens,
/// and they are refused when they dial again; holders of new tokens get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_epoch_drops_and_refuses_old_tokens() {
    let origin = private_broadcaster(0).await;
    let old = invited_viewer(&origin, 75, Admission::Invited(good_token(0))).await;
    publish(&origin, &stream_key(), 0, SEGMENT, payload(0)).await;
    let nodes = [old];
    assert!(wait_for(&nodes, WAIT, |s| s.contains(0)).await);
    let [old] = nodes;
    assert_eq!(old.origin_refused(), None);

    origin.raise_token_epoch(1);
    let refusal = poll_for(|| old.origin_refused()).await;
    assert_eq!(refusal, Some(TokenError::Revoked));
    let fresh = invited_viewer(&origin, 76, Admission::Invited(good_token(1))).await;
    for n in 1..3 {
        publish(&origin, &stream_key(), n, SEGMENT, payload(n)).await;
        tokio::time::sleep(SEGMENT).await;
    }
    let nodes = [fresh];
    assert!(wait_for(&nodes, WAIT, |s| s.contains(2)).await);
    let [fresh] = nodes;
    assert!(
        !store_has(&old, 2),
        "a revoked viewer still received segments"
    );
    shutdown_all([origin, old, fresh]).await;
}

fn store_has(node: &Node, n: u64) -> bool {
    starling::store::lock(&node.store()).contains(n)
}

/// Polls `probe` every 100 ms for at most [`WAIT`].
async fn poll_for<T>(probe: impl Fn() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- the real programs

/// Runs `starling-broadcaster token` with `args`; returns (success, stdout, stderr).
fn token_command(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(harness::program("starling-broadcaster"))
        .arg("token")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a viewer of `ticket` with `extra` flags (not waiting for its URL).
fn spawn_viewer(ticket: &str, extra: &[&str]) -> harness::Proc {
    let mut cmd = Command::new(harness::program("starling-viewer"));
    cmd.arg(ticket)
        .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("STARLING_TOKEN")
        .stdin(Stdio::null());
    harness::Proc::spawn("viewer", cmd)
}

/// The viewer exits non-zero, without a panic, its one error line containing `words`.
fn assert_exits_saying(viewer: &mut harness::Proc, words: &str) {
    let status = viewer
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the viewer did not exit{}", viewer.output_tail()));
    assert!(!status.success(), "exit 0{}", viewer.output_tail());
    let stderr = harness::strip_ansi(&viewer.stderr_text());
    assert!(!stderr.contains("panicked"), "{}", viewer.output_tail());
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("starling-viewer:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", viewer.output_tail());
    assert!(
        errors[0].contains(words),
        "{:?} lacks {words:?}{}",
        errors[0],
        viewer.output_tail()
    );
}

#[test]
fn programs_private_stream_token_invite_and_revoke() {
    let _turn = harness::one_stream_at_a_time();
    let dir = harness::TempDir::new("private");
    let key = dir.file("key");

    // No stream yet: a token for it is a clear error, and creates nothing.
    let (ok, out, err) = token_command(&["--key", &key]);
    assert!(
        !ok && out.is_empty() && err.contains("no key file"),
        "{err}"
    );
    assert!(!std::path::Path::new(&key).exists());

    let broadcaster = harness::start_broadcaster(
        &["--key", &key, "--http", "127.0.0.1:0", "--private"],
        Stdio::null(),
    );
    let ticket = broadcaster.ticket.clone();
    let (ok, token, err) = token_command(&["--key", &key, "--expires", "2h"]);
    assert!(ok, "{err}");
    assert_eq!(
        token.lines().count(),
        1,
        "stdout is only the token: {token:?}"
    );
    let token = token.trim().to_string();
    assert!(token.starts_with("starlingtok2"), "{token}");
    let (ok, _, err) = token_command(&["--key", &key, "--expires", "2 weeks"]);
    assert!(!ok && err.contains("bad lifetime"), "{err}");
    let (ok, later, err) = token_command(&["--key", &key, "--starts-in", "1h"]);
    assert!(ok && err.contains("3600 s from now"), "{err}");

    let mut no_token = spawn_viewer(&ticket, &[]);
    assert_exits_saying(&mut no_token, "this stream is private");
    let mut garbage = spawn_viewer(&ticket, &["--token", "starlingtok2zzzz"]);
    assert_exits_saying(&mut garbage, "malformed join token");
    let mut old = spawn_viewer(&ticket, &["--token", "starlingtok1aebagbaf"]);
    assert_exits_saying(&mut old, "older format");
    let now = unix_now_s();
    let other = credential(&SigningKey::from_bytes(&[9; 32]), 0, now, now + 60);
    let mut wrong = spawn_viewer(&ticket, &["--token", &other.encode()]);
    assert_exits_saying(&mut wrong, "another stream");
    let mut early = spawn_viewer(&ticket, &["--token", later.trim()]);
    assert_exits_saying(&mut early, "not valid yet");

    let mut good = harness::start_viewer(&ticket, &["--token", &token]);
    let (playlist, _) = harness::wait_for_segments(&good.url, 2, Duration::from_secs(60));
    assert!(playlist.entries.len() >= 2);

    // Revoke: the running broadcaster picks up the new epoch and the old token's viewer
    // is dropped and told why; a new token works.
    let (ok, fresh, err) = token_command(&["--key", &key, "--rotate"]);
    assert!(ok && fresh.trim() != token, "{err}");
    assert_exits_saying(&mut good.proc, "revoked");
    // A private stream's video is never granted to another web origin, even when asked.
    let app = "https://app.example";
    let renewed = harness::start_viewer(&ticket, &["--token", fresh.trim(), "--allow-origin", app]);
    harness::wait_for_segments(&renewed.url, 2, Duration::from_secs(60));
    for path in ["/live.m3u8", "/stats"] {
        let url = renewed.url.replace("/live.m3u8", path);
        let reply = harness::request_with("GET", &url, &[("Origin", app)]).unwrap();
        assert_eq!(reply.status, 200, "{url}");
        assert_eq!(reply.header("access-control-allow-origin"), None, "{url}");
    }
    let stderr = renewed.proc.stderr_text();
    assert!(
        stderr.contains("--allow-origin ignored: a private stream"),
        "{}",
        renewed.proc.output_tail()
    );
    // Same stream, new epoch: the key and ticket did not change.
    let after = *Credential::decode(fresh.trim()).unwrap().token();
    let stream = starling::stream::Ticket::decode(&ticket).unwrap().stream;
    assert_eq!((after.stream, after.epoch), (stream, 1));
    drop(broadcaster);
}
