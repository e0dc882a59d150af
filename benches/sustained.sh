#!/bin/sh
# One host thread calling cruncher.crunch (~100 µs of allocation-heavy pure Python) for
# 1.5 s per run: ours on each allocator with accounting on and off, CPython's own
# allocators (PYTHONMALLOC, no wrapper), the loader as a C host gets it (the cdylib,
# dlopened: BENCH_CDYLIB), and polyplug_python 0.1.3 (the reference),
# alternating, ROUNDS rounds (default 3); then the median calls/s of each and the median
# of the per-round ratios to the reference. Run from the repository root; state `uptime`
# with the figures. `BENCH_CALLS=n` instead counts n calls per run (for callgrind).
set -eu
rounds=${1:-3}
log=target/bench-extra/sustained.log
mkdir -p target/bench-extra
cargo bench --bench ours --no-run 2>/dev/null
cargo bench --bench reference --no-run 2>/dev/null
cargo build --release --lib 2>/dev/null
uptime | tee "$log"
for r in $(seq "$rounds"); do
    for cfg in mimalloc:on mimalloc:off malloc:on malloc:off; do
        BENCH_ALLOCATOR=${cfg%:*} BENCH_ACCOUNTING=${cfg#*:} \
            cargo bench -q --bench ours -- sustained 2>/dev/null | grep '^sustained' | tee -a "$log"
    done
    for pm in mimalloc pymalloc; do
        PYTHONMALLOC=$pm cargo bench -q --bench ours -- sustained 2>/dev/null | grep '^sustained' | tee -a "$log"
    done
    BENCH_CDYLIB=target/release/libpolyplug_subinterp.so \
        cargo bench -q --bench ours -- sustained 2>/dev/null | grep '^sustained' | tee -a "$log"
    cargo bench -q --bench reference -- sustained 2>/dev/null | grep '^sustained' | tee -a "$log"
done
uptime | tee -a "$log"
python3 - "$log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"sustained (.+?): (\d+) calls/s", line)
    if m:
        runs.setdefault(m[1], []).append(int(m[2]))
ref = runs.get("reference", [])
print(f"| configuration | calls/s (median of {len(ref)}) | µs per call | vs reference (median of per-round ratios) |")
print("|---|---|---|---|")
for k, v in runs.items():
    med = statistics.median(v)
    ratio = statistics.median(a / b for a, b in zip(v, ref)) if ref else float("nan")
    print(f"| {k} | {med:.0f} ({', '.join(map(str, v))}) | {1e6 / med:.1f} | {ratio:.2f}x |")
PY
