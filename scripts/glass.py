#!/usr/bin/env python3
"""Glass-to-glass delay: camera → broadcaster → viewer mesh → a player reading at real speed.

A source ffmpeg makes a live test picture at real speed (`-re`) and pipes it to
`starling-broadcaster --input -`; the wall time of its first byte (packets flushed one by one)
is t0 and the first video pts p0. Viewers join the mesh; one more ffmpeg reads one viewer's
playlist at real speed with `-copyts`, as ffplay does, and logs every frame it passes on. A
frame with pts p passed on at wall time w is w - (t0 + p - p0) behind the camera.

Prints one JSON line: the delay's p50/p95/max over the measured frames, the settings, and the
mesh's figures (origin copies, share from peers, missed deadlines).

With `--player browser`, headless Chromium plays the viewer's watch page (hls.js) instead, and
the delay is the page's own figure, read twice a second over DevTools: the wall time minus the
EXT-X-PROGRAM-DATE-TIME of the picture shown (the broadcaster's clock, so the source's encoder
and pipe are left out), over `--seconds` after the first 5 s of playing.

    scripts/glass.py [--latency low] [--viewers 4] [--seconds 40] [--player ffmpeg|browser] [--bin DIR]

DIR holds the two programs (default: $CARGO_TARGET_DIR/debug, else target/debug).
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class DevTools:
    """A minimal DevTools websocket client: Runtime.evaluate and nothing else."""

    def __init__(self, url):
        rest = url[len("ws://"):]
        host, path = rest.split("/", 1)
        hostname, port = host.split(":")
        self.sock = socket.create_connection((hostname, int(port)), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self.sock.recv(1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"websocket refused: {head!r}")
        self.next_id = 1

    def _recv_exact(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise OSError("devtools closed")
            out += chunk
        return out

    def _receive(self):
        message = b""
        while True:
            b0, b1 = self._recv_exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._recv_exact(8))[0]
            payload = self._recv_exact(length)
            if b0 & 0x0F in (0x9, 0xA):
                continue
            message += payload
            if b0 & 0x80:
                return message

    def evaluate(self, expression):
        call_id = self.next_id
        self.next_id += 1
        payload = json.dumps({"id": call_id, "method": "Runtime.evaluate",
                              "params": {"expression": expression, "returnByValue": True}}).encode()
        mask = os.urandom(4)
        head = bytes([0x81])
        if len(payload) < 126:
            head += bytes([0x80 | len(payload)])
        else:
            head += bytes([0x80 | 126]) + struct.pack(">H", len(payload))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            message = json.loads(self._receive())
            if message.get("id") == call_id:
                return message.get("result", {}).get("result", {}).get("value")


# The page's delay behind live in seconds, or null: from hls.js when the page exposes it, else
# the figure it shows (one decimal).
BEHIND = """(() => {
  const v = document.querySelector('video');
  if (!v || v.currentTime <= 0 || v.paused) return null;
  const h = window.starlingHls;
  if (h && h.playingDate) return (Date.now() - h.playingDate.getTime()) / 1000;
  const t = (document.getElementById('stat-behind') || {}).textContent || '';
  const m = t.match(/([0-9.]+) s/);
  return m ? parseFloat(m[1]) : null;
})()"""


def browser_delays(page, seconds, tmp, procs):
    profile = os.path.join(tmp, "chromium")
    chromium = subprocess.Popen(
        [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--remote-debugging-port=0", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", page],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(chromium)
    port_file = os.path.join(profile, "DevToolsActivePort")
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        time.sleep(0.2)
    port = int(open(port_file).read().split()[0])
    socket_url = None
    while socket_url is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                for target in json.load(r):
                    if target.get("type") == "page" and target.get("url", "").startswith(page):
                        socket_url = target["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    devtools = DevTools(socket_url)
    playing_since = None
    delays = []
    while True:
        value = devtools.evaluate(BEHIND)
        now = time.time()
        if value is not None:
            playing_since = playing_since or now
            if now - playing_since >= 5:
                delays.append(float(value))
        if playing_since and now - playing_since >= 5 + seconds:
            return delays
        time.sleep(0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", choices=["normal", "low"], default="normal")
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=40, help="media time the player reads")
    parser.add_argument("--player", choices=["ffmpeg", "browser"], default="ffmpeg")
    default_bin = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug")
    parser.add_argument("--bin", default=default_bin)
    args = parser.parse_args()

    procs = []
    tmp = tempfile.mkdtemp(prefix="starling-glass-")
    try:
        http = free_port()
        # 25 fps, a keyframe every second, no B-frames: cuts land where either preset asks.
        source = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
             "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
             "-g", "25", "-b:v", "1M", "-flush_packets", "1", "-f", "mpegts", "pipe:1"],
            stdout=subprocess.PIPE)
        procs.append(source)
        broadcaster = subprocess.Popen(
            [os.path.join(args.bin, "starling-broadcaster"), "--input", "-",
             "--key", os.path.join(tmp, "key"), "--http", f"127.0.0.1:{http}",
             "--listen", "127.0.0.1:0", "--latency", args.latency],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(broadcaster)

        head = bytearray()
        t0 = []

        def pump():
            while True:
                chunk = source.stdout.read1(65536)
                if not chunk:
                    break
                if not t0:
                    t0.append(time.time())
                if len(head) < 1 << 20:
                    head.extend(chunk)
                try:
                    broadcaster.stdin.write(chunk)
                    broadcaster.stdin.flush()
                except BrokenPipeError:
                    break

        threading.Thread(target=pump, daemon=True).start()
        ticket = broadcaster.stdout.readline().decode().strip()

        urls = []
        for _ in range(args.viewers):
            viewer = subprocess.Popen(
                [os.path.join(args.bin, "starling-viewer"), ticket, "--http", "127.0.0.1:0",
                 "--listen", "127.0.0.1:0", "--latency", args.latency],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            procs.append(viewer)
            urls.append(viewer.stdout.readline().decode().strip())
        playlist = urls[0]
        while True:
            try:
                with urllib.request.urlopen(playlist, timeout=5) as r:
                    # The viewer's live window lists two segments.
                    if r.read().count(b"#EXTINF") >= 2:
                        break
            except OSError:
                pass
            time.sleep(0.2)

        if args.player == "browser":
            steady = browser_delays(playlist.replace("live.m3u8", ""), args.seconds, tmp, procs)
            return report(args, steady, http, urls)

        probe = os.path.join(tmp, "head.ts")
        with open(probe, "wb") as f:
            f.write(bytes(head))
        p0 = float(subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
             "packet=pts_time", "-of", "csv=p=0", "-read_intervals", "%+#1", probe],
            capture_output=True, text=True, check=True).stdout.split()[0].strip(","))

        player = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-hide_banner", "-re", "-copyts", "-i", playlist,
             "-map", "0:v", "-t", str(args.seconds), "-vf", "showinfo", "-f", "null", "-"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(player)
        frame = re.compile(r"pts_time:\s*([0-9.]+)")
        delays = []
        for line in player.stderr:
            now = time.time()
            m = frame.search(line)
            if m and "Parsed_showinfo" in line:
                delays.append(now - (t0[0] + float(m.group(1)) - p0))
        player.wait()

        # The player's first second is its start-up burst; the rest is steady playback.
        steady = delays[25:] or delays
        return report(args, steady, http, urls)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def report(args, steady, http, urls):
    """Prints the JSON line for the delays measured, with the mesh's figures."""
    b = stats(f"http://127.0.0.1:{http}/stats")
    vs = [stats(u.replace("live.m3u8", "stats")) for u in urls]
    received = [v["bytes_from_peers"] + v["bytes_from_origin"] for v in vs]
    stream_bytes = sum(received) / len(received)
    print(json.dumps({
        "latency": args.latency,
        "player": args.player,
        "viewers": args.viewers,
        "seconds": args.seconds,
        "frames": len(steady),
        "glass_to_glass_s": {
            "p50": round(percentile(steady, 0.5), 2),
            "p95": round(percentile(steady, 0.95), 2),
            "max": round(max(steady), 2),
        },
        "origin_copies": round(b["bytes_uploaded"] / stream_bytes, 2),
        "share_from_peers": round(
            sum(v["bytes_from_peers"] for v in vs) / sum(received), 3),
        "missed_deadlines": sum(v["missed_deadlines"] for v in vs),
    }))


if __name__ == "__main__":
    sys.exit(main())
