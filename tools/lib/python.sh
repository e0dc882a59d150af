# Sourced by tools/python, tools/python312 and tools/test: the one place the shell side
# finds CPython and states which one will do. (The build scripts keep their own gate in
# Rust, interp-pool/build_python.rs, because cargo builds without tools/.)
#
# The rule: a CPython of the wanted version built with --enable-shared (a shared
# libpython: we embed it).

# python_gate EXE WANT
#   WANT is "3.12" (exactly that minor) or "3.13+" (that or newer).
#   Prints "EXECUTABLE (VERSION)" for an interpreter that runs, adding ", not a shared
#   build" when it lacks a shared libpython; returns 0 when EXE meets WANT, 1 when it runs
#   but does not, 2 (printing nothing) when it does not run.
python_gate() {
  local exe=$1 want=$2
  [ -x "$exe" ] || command -v "$exe" >/dev/null 2>&1 || return 2
  "$exe" - "$want" <<'PY' 2>/dev/null || return $?
import sys, sysconfig
want = sys.argv[1]
wanted = tuple(int(x) for x in want.rstrip("+").split("."))
have = sys.version_info[:2]
shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
version_ok = have >= wanted if want.endswith("+") else have == wanted
print(f"{sys.executable} ({sys.version.split()[0]}{'' if shared else ', not a shared build'})")
sys.exit(0 if version_ok and shared else 1)
PY
}

# pyenv_root: $PYENV_ROOT, else `pyenv root`, else ~/.pyenv.
pyenv_root() {
  if [ -n "${PYENV_ROOT:-}" ]; then
    echo "$PYENV_ROOT"
  else
    pyenv root 2>/dev/null || echo "$HOME/.pyenv"
  fi
}

# find_python MINOR...   e.g. `find_python 3.14 3.13`
#   Prints the path of the first interpreter that passes `python_gate EXE MINOR`, trying
#   python3.N on PATH for each MINOR in order, then pyenv's versions of each MINOR, newest
#   patch release first. Returns 1 (printing nothing) if none does.
find_python() {
  local v p d root
  for v in "$@"; do
    if p=$(command -v "python$v" 2>/dev/null) && python_gate "$p" "$v" >/dev/null; then
      echo "$p"
      return 0
    fi
  done
  root=$(pyenv_root)
  for v in "$@"; do
    for d in $(ls -d "$root/versions/$v".* 2>/dev/null | sort -rV); do
      if python_gate "$d/bin/python$v" "$v" >/dev/null; then
        echo "$d/bin/python$v"
        return 0
      fi
    done
  done
  return 1
}
