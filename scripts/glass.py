#!/usr/bin/env python3
"""Glass-to-glass delay: camera → broadcaster → viewer mesh → a player reading at real speed.

A source ffmpeg makes a live test picture at real speed (`-re`) and pipes it to
`starling-broadcaster --input -`; the wall time of its first byte (packets flushed one by one)
is t0 and the first video pts p0. Viewers join the mesh; one more ffmpeg reads one viewer's
playlist at real speed with `-copyts`, as ffplay does, and logs every frame it passes on. A
frame with pts p passed on at wall time w is w - (t0 + p - p0) behind the camera.

Prints one JSON line: the delay's p50/p95/max over the measured frames, the settings, and the
mesh's figures (origin copies, share from peers, missed deadlines).

    scripts/glass.py [--latency low] [--viewers 4] [--seconds 40] [--bin DIR]

DIR holds the two programs (default: $CARGO_TARGET_DIR/debug, else target/debug).
"""

import argparse
import json
import os
import re
import socket
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", choices=["normal", "low"], default="normal")
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=40, help="media time the player reads")
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
        b = stats(f"http://127.0.0.1:{http}/stats")
        vs = [stats(u.replace("live.m3u8", "stats")) for u in urls]
        received = [v["bytes_from_peers"] + v["bytes_from_origin"] for v in vs]
        stream_bytes = sum(received) / len(received)
        print(json.dumps({
            "latency": args.latency,
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
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
