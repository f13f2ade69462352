//! Bad input to the real programs: every case gets one clear line on stderr and a non-zero
//! exit, never a panic or a backtrace (see `harness::assert_clear_failure`). Flags out of
//! range, key files that cannot be used (and are never overwritten), inputs that are missing
//! or not video, ffmpeg missing, and ffmpeg dying mid-stream, where the broadcaster ends the
//! stream so its viewers keep and finish what they have.
//!
//! Random bytes on `--input`, malformed tickets, a ticket for another stream, a corrupt key
//! and busy ports are in `tests/e2e.rs`.

mod common;
mod harness;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::players::require_tool;
use harness::{
    assert_clear_failure, count, fetch_playlist, get, one_stream_at_a_time, poll_until, program,
    resolve, start_broadcaster, start_viewer, stats_at, wait_for_segments, Proc, TempDir,
};

/// The account that runs the broadcaster when a test needs a file it may not read; root may
/// read anything. The player tests use the same one.
const OTHER_USER: &str = common::players::VLC_USER;

/// A valid key file's contents: 64 hex characters.
const VALID_KEY: &str = "0101010101010101010101010101010101010101010101010101010101010101\n";

/// Runs `program` with `args` (stdin closed) and asserts a clear failure naming `needle`.
fn assert_fails(program_name: &str, args: &[&str], needle: &str) {
    let mut cmd = Command::new(program(program_name));
    cmd.args(args).stdin(Stdio::null());
    let mut proc = Proc::spawn(program_name, cmd);
    assert_clear_failure(&mut proc, &format!("{program_name} {args:?}"), needle);
}

/// Runs the broadcaster with `--key key`, stats on any port, then `extra`; asserts a clear
/// failure naming `needle`.
fn assert_broadcaster_fails(key: &str, extra: &[&str], needle: &str) {
    let mut args = vec!["--key", key, "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    assert_fails("starling-broadcaster", &args, needle);
}

#[test]
fn broadcaster_flags_out_of_range_are_clear_errors() {
    let dir = TempDir::new("bad-flags-b");
    let key = dir.file("key");
    let cases: &[(&[&str], &str)] = &[
        (&["--segment-duration", "0"], "--segment-duration"),
        (&["--segment-duration", "NaN"], "--segment-duration"),
        (&["--segment-duration", "1e400"], "--segment-duration"),
        (&["--segment-duration", "86400"], "--segment-duration"),
        (&["--segment-duration", "two"], "--segment-duration"),
        (&["--max-upload", "garbage"], "--max-upload"),
        (&["--max-upload", "0"], "--max-upload"),
        (&["--max-upload=-5M"], "--max-upload"),
        (&["--listen", "127.0.0.1:99999"], "--listen"),
        (&["--http", "localhost"], "--http"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (extra, needle) in cases {
        assert_broadcaster_fails(&key, extra, needle);
    }
    assert!(
        !dir.path().join("key").exists(),
        "a broadcaster refused for its flags still created a key"
    );
}

#[test]
fn viewer_flags_out_of_range_are_clear_errors() {
    // Well-formed; nobody listens there, and no case gets as far as dialling.
    let ticket = starling::stream::Ticket {
        stream: starling::stream::node_id(&ed25519_dalek::SigningKey::from_bytes(&[3; 32])),
        addrs: vec!["127.0.0.1:9".parse().expect("addr")],
    }
    .encode();
    let cases: &[(&[&str], &str)] = &[
        (&["--delay=-1"], "--delay"),
        (&["--delay", "21"], "--delay"),
        (&["--delay", "99999999999999999999999"], "--delay"),
        (&["--delay", "soon"], "--delay"),
        (&["--upload-limit", "garbage"], "--upload-limit"),
        (&["--upload-limit", "0"], "--upload-limit"),
        (&["--upload-limit", "1e13"], "--upload-limit"),
        (&["--upload-limit", "3M", "--no-upload"], "--no-upload"),
        (&["--http", "nonsense"], "--http"),
        (&["--listen", "127.0.0.1:-1"], "--listen"),
        (&["--site", ""], "--site"),
        (&["--site", "   "], "--site"),
        (&["--site", "floor\u{7}3"], "--site"),
        (&["--site", &"x".repeat(65)], "--site"),
        (&["--allow-origin", "*"], "--allow-origin"),
        (&["--allow-origin", "example.org"], "--allow-origin"),
        (
            &["--allow-origin", "https://example.org/page"],
            "--allow-origin",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec![ticket.as_str()];
        args.extend_from_slice(extra);
        assert_fails("starling-viewer", &args, needle);
    }
    assert_fails("starling-viewer", &[], "required");
}

/// Key files that cannot be used: each is a clear error, and whatever is at the key path is
/// left exactly as it was. (Plain text that is not a key is in `tests/e2e.rs`.)
#[test]
fn unusable_key_files_are_clear_errors_and_kept() {
    let dir = TempDir::new("bad-keys");

    let as_dir = dir.file("key-dir");
    fs::create_dir(&as_dir).expect("mkdir");
    assert_broadcaster_fails(&as_dir, &[], "cannot read key file");
    assert!(fs::metadata(&as_dir).is_ok_and(|m| m.is_dir()));

    // Invalid UTF-8, a key one byte short, one byte long, and 64 characters that are not hex.
    let corrupt: [(&str, Vec<u8>); 4] = [
        ("key-binary", vec![0xff, 0xfe, 0x00, 0x80, 0xc3]),
        ("key-short", vec![7; 31]),
        ("key-long", vec![7; 33]),
        ("key-not-hex", "zz".repeat(32).into_bytes()),
    ];
    for (name, bytes) in corrupt {
        let path = dir.file(name);
        fs::write(&path, &bytes).expect("write key");
        assert_broadcaster_fails(&path, &[], "is corrupt");
        assert_eq!(
            fs::read(&path).expect("read key"),
            bytes,
            "{name} was changed"
        );
        assert!(
            !dir.path().join(format!("{name}.state")).exists(),
            "{name}: a state file was written for a stream that never started"
        );
    }

    // The key's directory is a regular file, or cannot be created at all (/proc takes no
    // new directories, not even from root).
    let file = dir.file("plain-file");
    fs::write(&file, b"keep me").expect("write");
    assert_broadcaster_fails(&format!("{file}/key"), &[], "key file");
    assert_eq!(fs::read(&file).expect("read"), b"keep me");
    let nowhere = format!("/proc/starling-no-such-dir-{}/key", std::process::id());
    assert_broadcaster_fails(&nowhere, &[], "cannot write key file");
}

/// Key paths that are a link, open to others, or no regular file: one clear line each, from
/// the broadcaster and from `token`, at once (a FIFO would block a plain open, `/dev/zero`
/// would fill memory), and nothing at the path changed.
#[test]
fn key_files_that_are_links_shared_or_not_files_are_one_clear_line() {
    let dir = TempDir::new("key-kinds");
    let real = dir.file("real.key");
    fs::write(&real, VALID_KEY).expect("write key");
    fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.file("link.key");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let shared = dir.file("shared.key");
    fs::write(&shared, VALID_KEY).expect("write key");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).expect("chmod");
    let fifo = dir.file("fifo.key");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let cases = [
        (link.as_str(), "symbolic link"),
        (shared.as_str(), "chmod 600"),
        ("/dev/zero", "not a regular file"),
        (fifo.as_str(), "not a regular file"),
    ];
    for (key, needle) in cases {
        assert_broadcaster_fails(key, &[], needle);
        assert_fails("starling-broadcaster", &["token", "--key", key], needle);
    }
    assert!(fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
    let mode = fs::metadata(&shared).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "the shared key's mode was changed");
    assert_eq!(fs::read_to_string(&shared).expect("read"), VALID_KEY);
    assert!(fs::symlink_metadata(&fifo).is_ok_and(|m| m.file_type().is_fifo()));
    for side in ["link.key", "shared.key", "fifo.key"] {
        for suffix in [".state", ".tokens", ".lock"] {
            let beside = dir.path().join(format!("{side}{suffix}"));
            assert!(!beside.exists(), "{} was written", beside.display());
        }
    }
}

/// A ticket or a token naming a small-order stream key (which a lax signature check lets
/// "sign" anything) is one clear line from the viewer, before any dialling.
#[test]
fn a_small_order_stream_key_is_one_clear_line() {
    // The identity point: y = 1, compressed.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = starling::stream::Ticket {
        stream: starling::stream::NodeId(identity),
        addrs: vec!["127.0.0.1:9".parse().expect("addr")],
    }
    .encode();
    assert_fails("starling-viewer", &[&weak], "small-order");
}

/// A key the broadcaster's user may not read, in a directory it may not enter, or a new key
/// where it may not write: a clear error, nothing changed. Root reads everything, so as root
/// the broadcaster runs as the tests' ordinary user.
#[test]
fn key_files_without_permission_are_clear_errors() {
    let Some(base) = command_as_ordinary_user() else {
        return;
    };
    let dir = TempDir::new("key-perms");
    let unreadable = dir.file("unreadable.key");
    fs::write(&unreadable, VALID_KEY).expect("write key");
    fs::set_permissions(&unreadable, fs::Permissions::from_mode(0o000)).expect("chmod");
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).expect("mkdir");
    let locked_key = locked
        .join("broadcaster.key")
        .to_string_lossy()
        .into_owned();
    fs::write(&locked_key, VALID_KEY).expect("write key");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
    let read_only = dir.path().join("read-only");
    fs::create_dir(&read_only).expect("mkdir");
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).expect("chmod");
    let not_writable = read_only.join("new.key").to_string_lossy().into_owned();
    // Others (the ordinary user, when this is root) must reach the files above.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");

    for (key, needle) in [
        (&unreadable, "cannot read key file"),
        (&locked_key, "cannot read key file"),
        (&not_writable, "cannot write key file"),
    ] {
        let mut cmd = base();
        cmd.args(["--key", key, "--http", "127.0.0.1:0"])
            .stdin(Stdio::null());
        let mut proc = Proc::spawn("broadcaster", cmd);
        assert_clear_failure(&mut proc, &format!("broadcaster with --key {key}"), needle);
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_eq!(fs::read_to_string(&unreadable).expect("read"), VALID_KEY);
    assert_eq!(fs::read_to_string(&locked_key).expect("read"), VALID_KEY);
    let mode = fs::metadata(&unreadable)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0, "the unreadable key's mode was changed");
    assert!(!read_only.join("new.key").exists());
}

/// A command that starts the broadcaster as a user who does not own the tests' files: this
/// user, or (as root, who may read anything) [`OTHER_USER`] through `runuser`. None, with a
/// loud skip, when that is not possible here; under CI that is a failure.
fn command_as_ordinary_user() -> Option<Box<dyn Fn() -> Command>> {
    let broadcaster = program("starling-broadcaster");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some(Box::new(move || Command::new(&broadcaster)));
    }
    // On a fresh machine nothing may have made the user yet (the player tests make it too).
    let user_exists = common::players::ensure_vlc_user().is_ok();
    if !user_exists || !require_tool("runuser") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "as root, this test needs the user {OTHER_USER} and runuser; .ci/run provides both"
        );
        eprintln!("SKIP: as root, this test needs the user {OTHER_USER} and runuser");
        return None;
    }
    Some(Box::new(move || {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", OTHER_USER, "--"]).arg(&broadcaster);
        cmd
    }))
}

#[test]
fn missing_input_file_is_a_clear_error_before_anything_starts() {
    let dir = TempDir::new("missing-input");
    let key = dir.file("key");
    // A .ts file is read here, anything else by ffmpeg: both are checked before starting.
    for name in ["no-such-clip.ts", "no-such-clip.mp4"] {
        assert_broadcaster_fails(&key, &["--input", &dir.file(name)], "cannot open");
    }
    assert!(
        !dir.path().join("key").exists(),
        "a key was created for a broadcast whose input does not exist"
    );
}

/// An input handed to ffmpeg that it cannot read: an MP4 cut off after its first box.
/// (Plain text would not do: ffmpeg renders it as ANSI art.)
#[test]
fn input_ffmpeg_cannot_read_is_a_clear_error() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = TempDir::new("ffmpeg-unreadable");
    let key = dir.file("key");
    let broken = dir.file("broken.mp4");
    let mut mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2".to_vec();
    mp4.resize(4096, 0);
    fs::write(&broken, mp4).expect("write");
    assert_broadcaster_fails(&key, &["--input", &broken], "ffmpeg failed");
}

#[test]
fn missing_ffmpeg_is_a_clear_error() {
    let dir = TempDir::new("no-ffmpeg");
    let key = dir.file("key");
    let empty_path = dir.path().join("bin");
    fs::create_dir(&empty_path).expect("mkdir");
    let clip = dir.file("clip.mp4");
    fs::write(&clip, b"an mp4 only by name").expect("write");
    let mut cmd = Command::new(program("starling-broadcaster"));
    cmd.args(["--key", &key, "--http", "127.0.0.1:0", "--input", &clip])
        .env("PATH", &empty_path)
        .stdin(Stdio::null());
    let mut proc = Proc::spawn("broadcaster", cmd);
    assert_clear_failure(&mut proc, "broadcaster without ffmpeg", "ffmpeg not found");
}

/// ffmpeg killed mid-stream (as by the OOM killer): the broadcaster ends the stream, so a
/// viewer that was watching gets every segment published before the death and a playlist
/// with EXT-X-ENDLIST, keeps serving them, and the broadcaster exits non-zero saying how
/// ffmpeg died and after how many segments.
#[test]
fn ffmpeg_dying_mid_stream_ends_the_stream_and_viewers_keep_it() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = TempDir::new("ffmpeg-dies");
    let key = dir.file("key");
    let clip = dir.file("long.mp4");
    // Far longer than the test: ffmpeg must die, not finish.
    harness::make_clip(&clip, 120);
    let _one = one_stream_at_a_time();
    let mut broadcaster = start_broadcaster(
        &[
            "--key",
            &key,
            "--http",
            "127.0.0.1:0",
            "--input",
            &clip,
            "--segment-duration",
            "1",
        ],
        Stdio::null(),
    );
    let viewer = start_viewer(&broadcaster.ticket, &["--delay", "1"]);
    wait_for_segments(&viewer.url, 2, Duration::from_secs(60));

    let ffmpeg = children_named(broadcaster.proc.id(), "ffmpeg");
    assert_eq!(
        ffmpeg.len(),
        1,
        "expected one ffmpeg child of the broadcaster, found {ffmpeg:?}{}",
        broadcaster.proc.output_tail()
    );
    let killed = Command::new("kill")
        .args(["-KILL", &ffmpeg[0].to_string()])
        .status();
    assert!(
        killed.is_ok_and(|s| s.success()),
        "kill -KILL ffmpeg failed"
    );

    let mut last = String::from("(no playlist)");
    let ended = poll_until(Duration::from_secs(60), || {
        let (playlist, text) = fetch_playlist(&viewer.url)?;
        last = text;
        playlist.ended.then_some(playlist)
    })
    .unwrap_or_else(|| {
        panic!(
            "the viewer's playlist never ended after ffmpeg died; last:\n{last}{}",
            broadcaster.proc.output_tail()
        )
    });
    // The viewer still serves every segment it lists.
    for entry in &ended.entries {
        let url = resolve(&viewer.url, &entry.uri);
        let segment = get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(segment.status, 200, "{url} after ffmpeg died");
        assert!(
            segment.body.first() == Some(&0x47) && segment.body.len() % 188 == 0,
            "{url} is not MPEG-TS ({} bytes)",
            segment.body.len()
        );
    }
    let stats = stats_at(&viewer.url_of("/stats"));
    assert_eq!(count(&stats, "rejected_segments"), 0, "{stats}");

    assert_clear_failure(
        &mut broadcaster.proc,
        "broadcaster whose ffmpeg died",
        "ffmpeg failed",
    );
    let stderr = broadcaster.proc.stderr_text();
    let error = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    assert!(
        error.contains("SIGKILL"),
        "the error should say how ffmpeg died: {error:?}"
    );
    let published: u64 = error
        .split_once("after ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error should say after how many segments: {error:?}"));
    // A fresh key numbers from 0: the viewer's ended playlist reaches the last one published.
    assert_eq!(
        ended.max_number(),
        Some(published - 1),
        "the viewer did not get every segment published before ffmpeg died:\n{last}"
    );
}

/// The pids of `parent`'s children whose command name is `name`, read from `/proc`.
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && comm == name).then_some(pid)
        })
        .collect()
}
