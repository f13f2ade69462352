#!/bin/sh
# Regenerates assets/demo.ts, the clip the broadcaster loops when no --input is given.
#
# Why these settings:
# - 24 fps with a keyframe every 12 frames puts a random-access point every 0.5 s exactly,
#   so every --segment-duration that is a multiple of 0.5 s cuts cleanly.
# - No B-frames: PTS rises in stream order, so the clip's first and last video PTS are its
#   extremes and the loop period is (last - first + one frame) = 10 s.
# - Exactly 10 s = 240 frames = 20 whole GOPs, so the loop seam falls on a keyframe.
# - A 1 kHz tone completes whole cycles in 10 s, so the loop seam is inaudible.
# - AAC frames (1024 samples, plus 1024 of encoder priming) cannot fill exactly 10 s at
#   48 kHz, so the tone is cut to 467 frames' worth: 468 packets end 16 ms before the next
#   pass starts. Players fill a small audio gap; an overlap they may drop or stutter on.
# - About 800 kbit/s video keeps the file (embedded in the binary) under 2 MB.
set -eu

cd "$(dirname "$0")"
out=demo.ts

ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=24" \
  -f lavfi -i "sine=frequency=1000:beep_factor=4:sample_rate=48000" \
  -t 10 \
  -map 0:v -map 1:a \
  -c:v libx264 -profile:v main -pix_fmt yuv420p -preset medium \
  -b:v 800k -maxrate 1000k -bufsize 1000k \
  -g 12 -keyint_min 12 -sc_threshold 0 -bf 0 \
  -af "atrim=end_sample=478208" \
  -c:a aac -b:a 64k -ac 1 \
  -map_metadata -1 -fflags +bitexact \
  -f mpegts "$out"

size=$(wc -c <"$out")
if [ "$size" -ge 2000000 ]; then
  echo "make-demo.sh: $out is $size bytes, over the 2 MB budget" >&2
  exit 1
fi
echo "wrote $out ($size bytes)"
