#!/bin/sh
# Instructions per `cruncher.crunch(2000)` call under callgrind (steady under load, unlike
# wall-clock figures): the `sustained` bench run with BENCH_CALLS=400 minus BENCH_CALLS=0,
# counting only inside `_PyEval_EvalFrameDefault` (the Python code, the glue and every
# allocation and free it makes; not the hand-off or waits). Configurations as
# `benches/sustained.sh`'s; each argument is one: `mimalloc:on` (default), `mimalloc:off`,
# `malloc:on`, `malloc:off`, `py:mimalloc` / `py:pymalloc` (PYTHONMALLOC), `reference`,
# `cdylib` (the loader `dlopen`ed from target/release/libpolyplug_subinterp.so, as a C host
# gets it: `cargo build --release --lib` first).
# Run from the repository root.
set -eu
calls=${CALLS:-400}
out=target/bench-extra/callgrind
mkdir -p "$out"
bin() {
    cargo bench --bench "$1" --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -1
}
ours=$(bin ours)
reference=$(bin reference)
count() { # $1: calls, $2: the binary, then VAR=value...
    n=$1
    b=$2
    shift 2
    env BENCH_CALLS="$n" "$@" valgrind --tool=callgrind --toggle-collect=_PyEval_EvalFrameDefault \
        --callgrind-out-file="$out/cg.$n" "$b" --bench sustained >/dev/null 2>"$out/log.$n"
    sed -n 's/^summary: //p' "$out/cg.$n"
}
for cfg in "${@:-mimalloc:on}"; do
    case $cfg in
    reference) set -- "$reference" ;;
    cdylib) set -- "$ours" BENCH_CDYLIB=target/release/libpolyplug_subinterp.so ;;
    py:*) set -- "$ours" PYTHONMALLOC="${cfg#py:}" ;;
    *) set -- "$ours" BENCH_ALLOCATOR="${cfg%:*}" BENCH_ACCOUNTING="${cfg#*:}" ;;
    esac
    zero=$(count 0 "$@")
    many=$(count "$calls" "$@")
    echo "$cfg: $(( (many - zero) / calls )) instructions per call ($many - $zero over $calls calls)"
done
