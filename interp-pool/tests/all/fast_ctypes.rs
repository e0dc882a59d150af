//! `install_fast_ctypes`: the native `ctypes.string_at` / `memmove` / `cast` give the same
//! results, result types, exception types and messages, memory effects and audit events
//! as ctypes' own functions, compared in the same interpreter over many inputs; the
//! install is idempotent and leaves functions someone else replaced alone.

use interp_pool::{install_fast_ctypes, InterpreterHandle, FAST_CTYPES_REGISTRY};

use crate::util::*;

fn spawn_ctypes(test: &str, name: &str) -> InterpreterHandle {
    spawn_with(ctypes_config(test, name))
}

/// Runs in the interpreter after the install: compares every case of both functions
/// with the originals and returns `(cases, mismatches)`.
const EQUIVALENCE: &str = r#"
import ctypes, random, re, sys

fast_string_at, orig_string_at = ctypes.__dict__[REGISTRY]["string_at"]
fast_memmove, orig_memmove = ctypes.__dict__[REGISTRY]["memmove"]
fast_cast, orig_cast = ctypes.__dict__[REGISTRY]["cast"]
assert ctypes.string_at is fast_string_at and ctypes.memmove is fast_memmove
assert ctypes.cast is fast_cast
assert type(fast_string_at).__name__ == "builtin_function_or_method"

events = []
recording = [False]
def hook(event, args):
    if recording[0] and event.startswith("ctypes."):
        events.append((event, args))
sys.addaudithook(hook)

def outcome(f, args, kwargs, sized_only=False, loose=False):
    del events[:]
    recording[0] = True
    try:
        r = f(*args, **kwargs)
        res = ("ok", type(r), len(r) if sized_only else r)
    except BaseException as e:
        res = ("err", type(e), str(e))
    finally:
        recording[0] = False
    if loose:
        # A temporary buffer ctypes makes per call (a str argument), or an address that
        # ctypes wraps: compare shapes, not addresses.
        if res[0] == "ok" and type(res[2]) is int:
            res = ("ok", res[1], "address")
        return res, [(e, ("address",) + a[1:]) for e, a in events]
    return res, list(events)

rng = random.Random(13)
SIZE = 4096
data = bytes(rng.randrange(256) for _ in range(SIZE)) + b"\0"
src_buf = ctypes.create_string_buffer(data, SIZE + 16)
src = ctypes.addressof(src_buf)
cases = 0
bad = []

def same(name, fast, orig, args, kwargs={}, sized_only=False):
    global cases
    cases += 1
    loose = any(type(a) is str for a in args)
    a = outcome(fast, args, kwargs, sized_only, loose)
    b = outcome(orig, args, kwargs, sized_only, loose)
    if a != b:
        bad.append(f"{name}{args!r:.80} {kwargs}: fast {a!r:.200} != ctypes {b!r:.200}")

# string_at: every size of the fast shape, at several offsets.
for n in range(SIZE + 1):
    same("string_at", fast_string_at, orig_string_at, (src + (n % 7), min(n, SIZE - 8)))
# Other argument forms, types, sizes, keywords and arities: all forwarded.
text = ctypes.create_string_buffer(b"nul-terminated")
t = ctypes.addressof(text)
for args, kwargs in [
    ((t,), {}), ((t, -1), {}), ((t,), {"size": 3}), ((), {"ptr": t, "size": 4}), ((), {"ptr": t}),
    ((t, True), {}), ((t, False), {}), ((t, -2), {}), ((t, 2**31), {}), ((t, 2**32 + 3), {}),
    ((t, 2**70), {}), ((t, 2.0), {}), ((t, None), {}), ((t, "3"), {}),
    ((ctypes.c_void_p(t), 5), {}), ((ctypes.c_char_p(b"abc"), 2), {}), ((text, 4), {}),
    ((b"bytes-arg", 5), {}), (("str-arg", 1), {}), ((None, 0), {}), ((0, 0), {}),
    ((-t, 0), {}), ((2**64 + t, 3), {}), ((2**70, 0), {}), ((1.5, 0), {}), ((object(), 0), {}),
    ((), {}), ((t, 1, 2), {}), ((t,), {"bogus": 1}), ((t, 1), {"size": 1}),
]:
    same("string_at", fast_string_at, orig_string_at, args, kwargs)
# string_at(0, n) returns n uninitialised bytes: compare type and length only.
same("string_at", fast_string_at, orig_string_at, (0, 16), sized_only=True)

# memmove: each call writes a fresh buffer; compare the result and the buffer after.
def mm_same(args_for, n_label, kwargs={}, loose=False):
    global cases
    cases += 1
    outs = []
    for f in (fast_memmove, orig_memmove):
        dst_buf = ctypes.create_string_buffer(SIZE + 16)
        dst = ctypes.addressof(dst_buf)
        args = args_for(dst, dst_buf)
        res, ev = outcome(f, args, kwargs, loose=loose)
        if res[0] == "ok" and type(res[2]) is int:
            res = ("ok", res[1], res[2] - dst)  # the address returned, relative to dst
        outs.append((res, ev, dst_buf.raw))
    if outs[0] != outs[1]:
        bad.append(f"memmove {n_label}: fast {outs[0][:2]!r:.200} != ctypes {outs[1][:2]!r:.200} (buffers equal: {outs[0][2] == outs[1][2]})")

for n in range(SIZE + 1):
    payload = data[n % 5 : n % 5 + n]
    mm_same(lambda d, b, n=n, p=payload: (d + n % 3, p, n), f"bytes {n}")
    mm_same(lambda d, b, n=n: (d, src + n % 11, n), f"address {n}")
# Overlap within one buffer, as C memmove allows.
def overlap(d, b):
    ctypes.memmove(d, data, 64)
    return (d + 3, d, 40)
mm_same(overlap, "overlap")
for label, args_for, kwargs in [
    ("dst c_void_p", lambda d, b: (ctypes.c_void_p(d), b"xyz", 3), {}),
    ("dst array", lambda d, b: (b, b"xyz", 3), {}),
    ("dst None n=0", lambda d, b: (None, b"xyz", 0), {}),
    ("dst 0 n=0", lambda d, b: (0, b"xyz", 0), {}),
    ("dst bool n=0", lambda d, b: (True, b"xyz", 0), {"loose": True}),
    ("dst float", lambda d, b: (1.0 * d, b"x", 1), {}),
    ("dst negative n=0", lambda d, b: (-d, b"x", 0), {"loose": True}),
    ("dst huge", lambda d, b: (2**70, b"x", 0), {}),
    ("src 0 n=0", lambda d, b: (d, 0, 0), {}),
    ("src None n=0", lambda d, b: (d, None, 0), {}),
    ("src str", lambda d, b: (d, "wide", 8), {}),
    ("src bytearray", lambda d, b: (d, bytearray(b"q"), 1), {}),
    ("src memoryview", lambda d, b: (d, memoryview(b"q"), 1), {}),
    ("src c_char_p", lambda d, b: (d, ctypes.c_char_p(b"chars"), 5), {}),
    ("src array", lambda d, b: (d, src_buf, 7), {}),
    ("src float", lambda d, b: (d, 2.5, 1), {}),
    ("src bool n=0", lambda d, b: (d, True, 0), {}),
    ("count True", lambda d, b: (d, b"ab", True), {}),
    ("count False", lambda d, b: (d, b"ab", False), {}),
    ("count float", lambda d, b: (d, b"ab", 1.0), {}),
    ("count None", lambda d, b: (d, b"ab", None), {}),
    ("count str", lambda d, b: (d, b"ab", "1"), {}),
    ("count c_size_t", lambda d, b: (d, b"ab", ctypes.c_size_t(2)), {}),
    ("arity 2", lambda d, b: (d, b"ab"), {}),
    ("arity 4", lambda d, b: (d, b"ab", 1, 1), {}),
    ("arity 0", lambda d, b: (), {}),
    ("keywords", lambda d, b: (d, b"ab"), {"kwargs": {"count": 1}}),
]:
    mm_same(args_for, label, **kwargs)
# cast: compare the result's type, the address it holds, what it keeps alive and
# what it points at.
def described(r):
    if isinstance(r, ctypes._Pointer) or isinstance(r, (ctypes.c_void_p, ctypes.c_char_p)):
        held = ctypes.c_void_p.from_buffer(r).value
    else:
        # Without the object's own address (which one a fresh object gets is the
        # allocator's business).
        held = re.sub(r" at 0x[0-9a-f]+", "", repr(r))
    objs = r._objects if hasattr(r, "_objects") else "n/a"
    return (type(r), held, type(objs).__name__, len(objs) if isinstance(objs, dict) else None, r._b_base_ is None if hasattr(r, "_b_base_") else "n/a")

def cast_same(label, args, kwargs={}, deref=None):
    global cases
    cases += 1
    outs = []
    for f in (fast_cast, orig_cast):
        del events[:]
        recording[0] = True
        r = None
        try:
            r = f(*args, **kwargs)
            res = None
        except BaseException as e:
            res = ("err", type(e), str(e))
        finally:
            recording[0] = False
        seen = list(events)
        if res is None:
            # Described after recording: the description's own ctypes calls audit too.
            res = ("ok",) + described(r) + ((deref(r),) if deref is not None else ())
        outs.append((res, seen))
    if outs[0] != outs[1]:
        bad.append(f"cast {label}: fast {outs[0]!r:.300} != ctypes {outs[1]!r:.300}")

class Pair(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int64), ("b", ctypes.c_int64)]
class MyPointer(ctypes.POINTER(ctypes.c_int)):
    pass
pair = Pair(7, 9)
for n in range(1, 300):
    cast_same(f"char[{n}]", (src + n, ctypes.POINTER(ctypes.c_char * n)), deref=lambda r: bytes(r.contents))
for label, args, kwargs, deref in [
    ("struct", (ctypes.addressof(pair), ctypes.POINTER(Pair)), {}, lambda r: (r.contents.a, r.contents.b)),
    ("int64", (ctypes.addressof(pair), ctypes.POINTER(ctypes.c_int64)), {}, lambda r: r[1]),
    ("subclass", (ctypes.addressof(pair), MyPointer), {}, lambda r: r[0]),
    ("null", (0, ctypes.POINTER(ctypes.c_int)), {}, lambda r: bool(r)),
    ("bool", (True, ctypes.POINTER(ctypes.c_int)), {}, None),
    ("negative", (-5, ctypes.POINTER(ctypes.c_int)), {}, None),
    ("huge", (2**70, ctypes.POINTER(ctypes.c_int)), {}, None),
    ("float", (1.0, ctypes.POINTER(ctypes.c_int)), {}, None),
    ("None", (None, ctypes.POINTER(ctypes.c_int)), {}, None),
    ("bytes", (b"abc", ctypes.POINTER(ctypes.c_char)), {}, lambda r: r[0]),
    ("c_void_p type", (src, ctypes.c_void_p), {}, None),
    ("c_char_p type", (src, ctypes.c_char_p), {}, None),
    ("c_int type", (src, ctypes.c_int), {}, None),
    ("int type", (src, int), {}, None),
    ("None type", (src, None), {}, None),
    ("CFUNCTYPE", (src, ctypes.CFUNCTYPE(None)), {}, None),
    ("array src", (src_buf, ctypes.POINTER(ctypes.c_char)), {}, lambda r: r[0]),
    ("byref src", (ctypes.byref(pair), ctypes.POINTER(Pair)), {}, lambda r: r.contents.b),
    ("pointer src", (ctypes.pointer(pair), ctypes.POINTER(Pair)), {}, lambda r: r.contents.a),
    ("c_void_p src", (ctypes.c_void_p(ctypes.addressof(pair)), ctypes.POINTER(Pair)), {}, lambda r: r.contents.a),
    ("arity 1", (src,), {}, None),
    ("arity 3", (src, ctypes.POINTER(ctypes.c_int), 1), {}, None),
    ("keywords", (), {"obj": src, "typ": ctypes.POINTER(ctypes.c_int)}, None),
]:
    cast_same(label, args, kwargs, deref)
result = (cases, bad)
"#;

#[test]
fn fast_paths_match_ctypes_for_every_input_form() {
    let h = spawn_ctypes(
        "fast_ctypes::fast_paths_match_ctypes_for_every_input_form",
        "fast-ctypes-eq",
    );
    let (cases, bad) = h
        .call(|py| {
            assert!(install_fast_ctypes(py)?);
            let globals = py.eval("{}")?;
            globals.call_method(
                py,
                "__setitem__",
                &[&py.str("REGISTRY")?, &py.str(FAST_CTYPES_REGISTRY)?],
            )?;
            py.run_in(EQUIVALENCE, &globals)?;
            let result = globals.get_item(py, "result")?.expect("result");
            let cases = result.get_index(py, 0)?.extract_i64(py)?;
            let bad = result.get_index(py, 1)?;
            let mut out = Vec::new();
            for i in 0..bad.len(py)? {
                out.push(bad.get_index(py, i)?.extract_string(py)?);
            }
            Ok((cases, out))
        })
        .unwrap();
    assert!(cases > 12_300, "only {cases} cases ran");
    assert!(
        bad.is_empty(),
        "{} of {cases} cases differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // The pool initialised Python in this test binary.
    assert!(interp_pool::owns_python());
    h.end();
}

#[test]
fn the_audit_event_of_string_at_is_raised_and_a_raising_hook_stops_the_call() {
    let h = spawn_ctypes(
        "fast_ctypes::the_audit_event_of_string_at_is_raised_and_a_raising_hook_stops_the_call",
        "fast-ctypes-audit",
    );
    h.call(|py| install_fast_ctypes(py).map(drop)).unwrap();
    run(
        &h,
        r#"
import ctypes, sys
buf = ctypes.create_string_buffer(b"audited")
addr = ctypes.addressof(buf)
seen = []
class Refused(Exception):
    pass
def hook(event, args):
    if event == "ctypes.string_at":
        seen.append(args)
        if args[1] == 3:
            raise Refused("no")
sys.addaudithook(hook)
assert ctypes.string_at(addr, 2) == b"au"
try:
    ctypes.string_at(addr, 3)
    refused = False
except Refused:
    refused = True
"#,
    );
    assert_eq!(eval_str(&h, "repr(refused)"), "True");
    assert_eq!(
        eval_str(&h, "repr(seen == [(addr, 2), (addr, 3)])"),
        "True",
        "{}",
        eval_str(&h, "repr(seen)")
    );
    h.end();
}

#[test]
fn install_is_idempotent_and_leaves_replaced_functions_alone() {
    let h = spawn_ctypes(
        "fast_ctypes::install_is_idempotent_and_leaves_replaced_functions_alone",
        "fast-ctypes-own",
    );
    // A module replaced memmove before the install: it keeps its own, string_at is ours.
    run(
        &h,
        "import ctypes\ndef my_memmove(d, s, n):\n    return 'mine'\nctypes.memmove = my_memmove\n",
    );
    assert!(!h.call(install_fast_ctypes).unwrap());
    assert_eq!(eval_str(&h, "repr(ctypes.memmove is my_memmove)"), "True");
    assert_eq!(
        eval_str(&h, "type(ctypes.string_at).__name__"),
        "builtin_function_or_method"
    );
    run(&h, "first = ctypes.string_at");
    assert!(!h.call(install_fast_ctypes).unwrap());
    assert_eq!(eval_str(&h, "repr(ctypes.string_at is first)"), "True");
    h.end();

    // Fresh interpreter: both installed; a second install changes nothing; a later
    // assignment is not fought.
    let h = spawn_ctypes(
        "fast_ctypes::install_is_idempotent_and_leaves_replaced_functions_alone",
        "fast-ctypes-twice",
    );
    assert!(h.call(install_fast_ctypes).unwrap());
    run(
        &h,
        "import ctypes\nfirst = (ctypes.string_at, ctypes.memmove)",
    );
    assert!(h.call(install_fast_ctypes).unwrap());
    assert_eq!(
        eval_str(
            &h,
            "repr(first == (ctypes.string_at, ctypes.memmove) and first[0] is ctypes.string_at)"
        ),
        "True"
    );
    run(&h, "ctypes.string_at = len");
    assert!(!h.call(install_fast_ctypes).unwrap());
    assert_eq!(eval_str(&h, "repr(ctypes.string_at is len)"), "True");
    // The fast paths hold their originals weakly (the registry keeps them): with the
    // registry gone, a call they would forward raises instead of crashing.
    run(
        &h,
        "import gc, weakref\nfast_memmove = ctypes.memmove\norig = weakref.ref(ctypes._interp_pool_fast_ctypes['memmove'][1])\ndel ctypes._interp_pool_fast_ctypes\ngc.collect()\ntry:\n    r = fast_memmove(1, None, 0)\n    gone = f'forwarded: {r}'\nexcept RuntimeError as e:\n    gone = str(e)\nexpected = 'forwarded: 1' if orig() is not None else 'is gone'\n",
    );
    // (On 3.12 something else still holds ctypes' memmove after the collection.)
    assert!(
        eval_str(&h, "gone").contains(&eval_str(&h, "expected")),
        "{}",
        eval_str(&h, "gone")
    );
    h.end();
}

#[test]
fn fast_paths_work_from_a_plugin_thread_and_die_with_their_interpreter() {
    let h = spawn_with(interp_pool::InterpreterConfig {
        allow_threads: true,
        ..ctypes_config(
            "fast_ctypes::fast_paths_work_from_a_plugin_thread_and_die_with_their_interpreter",
            "fast-ctypes-thread",
        )
    });
    assert!(h.call(install_fast_ctypes).unwrap());
    run(
        &h,
        r#"
import ctypes, threading
buf = ctypes.create_string_buffer(16)
addr = ctypes.addressof(buf)
out = []
def work():
    for i in range(1000):
        ctypes.memmove(addr, i.to_bytes(8, "little"), 8)
        out.append(int.from_bytes(ctypes.string_at(addr, 8), "little"))
    out.append(ctypes.string_at(ctypes.c_char_p(b"fallback"), 3))
t = threading.Thread(target=work)
t.start()
t.join()
"#,
    );
    assert_eq!(
        eval_str(
            &h,
            "repr(out[:-1] == list(range(1000)) and out[-1] == b'fal')"
        ),
        "True"
    );
    h.end();
}
