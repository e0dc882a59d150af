#!/bin/sh
# Does a caller spinning on the other vCPU slow the interpreter running the call (two vCPUs
# sharing a physical core)? The owner's side of `WaitPolicy::caller_spin_max`: the fixture
# cruncher's loop (`crunch(2000)`) timed by its own thread's CPU time (best of 30 batches of
# 50 calls: CPU time is not inflated by other processes' time slices, only by a sibling
# hardware thread) pinned to vCPU 0, alone and with vCPU 1 running a `sched_yield` loop
# (what a stretched caller spin does after its first 128 pauses) or a `pause` loop,
# alternating, ROUNDS rounds (default 2). Run from the repository root.
set -eu
rounds=${1:-2}
dir=target/bench-extra/sibling-spin
mkdir -p "$dir"
cat > "$dir/spin.c" <<'C'
#include <sched.h>
int main(int argc, char **argv) {
    if (argc > 1 && argv[1][0] == 'p')
        for (;;) __builtin_ia32_pause();
    for (;;) sched_yield();
}
C
cc -O2 -o "$dir/spin" "$dir/spin.c"
cat > "$dir/crunch.py" <<'PY'
import time
def crunch(n):
    s = 0
    for i in range(n):
        s += (i * i) % 7
    return s
best = min(
    (lambda t: [crunch(2000) for _ in range(50)] and time.thread_time() - t)(time.thread_time())
    for _ in range(30)
)
print(f"{best * 1e6 / 50:.1f} µs CPU per crunch(2000)")
PY
uptime
for r in $(seq "$rounds"); do
    for other in idle yield pause; do
        case $other in
        idle) printf '%-6s ' "$other"; taskset -c 0 tools/python "$dir/crunch.py" ;;
        *)
            taskset -c 1 "$dir/spin" "$other" &
            pid=$!
            printf '%-6s ' "$other"
            taskset -c 0 tools/python "$dir/crunch.py"
            kill "$pid"
            ;;
        esac
    done
done
uptime
