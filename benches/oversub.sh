#!/bin/sh
# The oversubscription curve (issue 22, direct dispatch): T = 1, 2, 4, 8 host threads,
# thread i calling one of two own-GIL bundles (i % 2), calls of ~1 µs (calculator.add),
# ~10 µs (cruncher.crunch(200)) and ~100-150 µs (cruncher.crunch(2000)); ours under Post
# and Direct, and polyplug_python 0.1.3 (the reference), alternating, ROUNDS rounds
# (default 3), each point 1.5 s of sustained calls after a 0.3 s warm-up. Then the median
# efficiency (aggregate calls/s / (min(T, cores) x one thread's calls/s)) and calls/s of
# each point. Run from the repository root; state `uptime` with the figures.
# `BENCH_SHORT=1 benches/oversub.sh 1`: 0.1 s per point, a smoke run (not for quoting).
set -eu
rounds=${1:-3}
log=target/bench-extra/oversub.log
mkdir -p target/bench-extra
cargo bench --bench ours --no-run 2>/dev/null
cargo bench --bench reference --no-run 2>/dev/null
uptime | tee "$log"
for r in $(seq "$rounds"); do
    cargo bench -q --bench ours -- oversub 2>/dev/null | grep '^oversub' | tee -a "$log"
    cargo bench -q --bench reference -- oversub 2>/dev/null | grep '^oversub' | tee -a "$log"
done
uptime | tee -a "$log"
python3 - "$log" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"oversub (\S+) (\S+) T=(\d+): (\d+) calls/s, .* efficiency ([\d.]+|nan)", line)
    if m:
        runs.setdefault((m[1], m[2]), {}).setdefault(int(m[3]), []).append((int(m[4]), float(m[5])))
ts = sorted({t for v in runs.values() for t in v})
print("| loader | call | " + " | ".join(f"T = {t}" for t in ts) + " |")
print("|---|---|" + "---|" * len(ts))
for (loader, op), by_t in runs.items():
    cells = []
    for t in ts:
        pts = by_t.get(t, [])
        if not pts:
            cells.append("")
            continue
        effs = [e for _, e in pts]
        cps = statistics.median(c for c, _ in pts)
        cells.append(f"{statistics.median(effs):.2f} ({min(effs):.2f}-{max(effs):.2f}; {cps:.0f}/s)")
    print(f"| {loader} | {op} | " + " | ".join(cells) + " |")
add = {loader: by_t for (loader, op), by_t in runs.items() if op == "calculator.add"}
ref = add.get("reference", {}).get(2, [])
for loader, by_t in add.items():
    pts = by_t.get(2, [])
    if pts and ref:
        ratio = statistics.median(a / b for (a, _), (b, _) in zip(pts, ref))
        print(f"2 bundles x 2 threads (T = 2), trivial: {loader} {statistics.median(c for c, _ in pts):.0f} calls/s, "
              f"{ratio:.2f}x the reference (median of per-round ratios)")
PY
