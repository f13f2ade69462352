#!/usr/bin/env bash
# A local Starling demo: one broadcaster playing the built-in clip and N viewers on this
# machine, each serving the stream as HLS on a free local port it prints.
#
# Usage: scripts/demo.sh [N_VIEWERS]    (default 3, at most 10)
# Ctrl-C stops everything. The broadcaster's key lives in a temp dir for this run only, so
# the demo never touches your real key in ~/.config/starling. The programs' logs are kept
# after the demo, in the directory it names (STARLING_DEMO_LOGS chooses another).
set -euo pipefail

readonly MAX_VIEWERS=10
# Tenths of a second a program may take to print its first line.
readonly STARTUP_TENTHS=300

viewers=${1:-3}
if ! [[ $viewers =~ ^[0-9]+$ ]] || ((viewers < 1 || viewers > MAX_VIEWERS)); then
    echo "usage: $0 [N_VIEWERS]   (1 to $MAX_VIEWERS, default 3)" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release
[[ $bin == /* ]] || bin=$root/$bin
# The key is for this run only; the logs stay for a look afterwards.
keydir=$(mktemp -d "${TMPDIR:-/tmp}/starling-demo-key.XXXXXX")
logs=${STARLING_DEMO_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/starling-demo-logs.XXXXXX")}
mkdir -p "$logs"
pids=()

# Stops every program this script started (SIGTERM, their clean exit; SIGKILL after 10 s),
# removes the run's key and says where the logs are.
# shellcheck disable=SC2317  # called by the EXIT trap, which shellcheck does not follow
cleanup() {
    trap - EXIT INT TERM
    local pid tick running
    if ((${#pids[@]} > 0)); then
        echo
        echo "Stopping the demo..."
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for ((tick = 0; tick < 100; tick++)); do
            running=0
            for pid in "${pids[@]}"; do
                if kill -0 "$pid" 2>/dev/null; then
                    running=1
                fi
            done
            ((running)) || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    rm -rf -- "$keydir"
    echo "demo: the programs' logs are kept in $logs"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints the first line that program `what` (pid `pid`) wrote to `out`, waiting at most
# STARTUP_TENTHS; on failure shows the end of its log `log`.
first_line() {
    local out=$1 pid=$2 what=$3 log=$4 line tick
    for ((tick = 0; tick < STARTUP_TENTHS; tick++)); do
        # Only a whole line counts: the program may be writing it right now.
        if [[ -s $out ]] && [[ $(wc -l <"$out") -ge 1 ]]; then
            IFS= read -r line <"$out"
            printf '%s\n' "$line"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $what exited before it was ready; its log ends with:" >&2
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "demo: $what printed nothing within $((STARTUP_TENTHS / 10)) s; its log ends with:" >&2
    tail -n 20 "$log" >&2
    return 1
}

echo "Building the release programs (the first build takes a few minutes)..."
# Not quiet: cargo's own progress shows what the minutes go to.
(cd "$root" && cargo build --release -p starling-broadcaster -p starling-viewer)
echo "Logs of this run: $logs"

# Port 0 everywhere: each server takes a free port and says which.
"$bin/starling-broadcaster" --key "$keydir/broadcaster.key" --http 127.0.0.1:0 \
    >"$logs/broadcaster.out" 2>"$logs/broadcaster.log" </dev/null &
pid=$!
pids+=("$pid")
ticket=$(first_line "$logs/broadcaster.out" "$pid" broadcaster "$logs/broadcaster.log")
dashboard=$(grep -o 'dashboard=http://[^ ]*' "$logs/broadcaster.log" | head -n 1 | cut -d= -f2 || true)

urls=()
for ((i = 0; i < viewers; i++)); do
    "$bin/starling-viewer" "$ticket" --http 127.0.0.1:0 \
        >"$logs/viewer$i.out" 2>"$logs/viewer$i.log" </dev/null &
    pid=$!
    pids+=("$pid")
    urls+=("$(first_line "$logs/viewer$i.out" "$pid" "viewer $((i + 1))" "$logs/viewer$i.log")")
done

cat <<EOF

Starling demo: 1 broadcaster (built-in clip), $viewers viewer(s) on this machine.

Ticket (another machine joins with: starling-viewer <ticket>):
  $ticket
Broadcaster dashboard: ${dashboard:-(its address is in $logs/broadcaster.log)}
EOF
for ((i = 0; i < viewers; i++)); do
    url=${urls[$i]}
    cat <<EOF

Viewer $((i + 1)): $url   (stats: ${url%live.m3u8}stats)
  vlc $url
  ffplay $url
  mpv $url
EOF
done
cat <<EOF

Logs: $logs/*.log (kept after the demo)
Press Ctrl-C to stop the demo.
EOF

# Returns when the broadcaster exits (it loops the clip forever) or on Ctrl-C.
wait "${pids[0]}" || true
echo "demo: the broadcaster exited; its log ends with:" >&2
tail -n 20 "$logs/broadcaster.log" >&2
exit 1
