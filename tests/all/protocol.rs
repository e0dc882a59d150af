//! polyplug_python 0.1.3's own test suite (tests/python_loader.rs, tests/code_source.rs),
//! rewritten against this loader: same behaviours, same error variants and message
//! fragments. The two that reached into the main interpreter with pyo3 are behavioural
//! here (`unload_then_load_runs_fresh_code`, `nested_dispatch_keeps_the_outer_arena`).

use polyplug::error::LoaderError;
use polyplug::loader::{BundleLoader, BundleSource, ManifestData};
use polyplug_abi::{AbiErrorCode, CallArena, DispatchType};
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};

use crate::support::*;

const WRITE_OUT: &str = "def write_out(impl, args, out, arena, alloc):\n    ctypes.c_int32.from_address(out).value = 0x2A\n";

fn write_out_bundle(name: &str) -> std::path::PathBuf {
    write_bundle(
        name,
        &plugin_source("writeout@1", WRITE_OUT, "write_out"),
        &[],
    )
    .1
}

/// fn 0 of `contract@1` with no args and an i32 out, as the write-out plugins define it.
fn dispatch_i32(rt: &polyplug::runtime::Runtime, contract: &str) -> i32 {
    let iface = resolve(rt, contract, 1);
    let mut out: i32 = 0;
    let err = vm_call(
        iface,
        null_instance(iface),
        0,
        std::ptr::null(),
        (&mut out as *mut i32).cast(),
        std::ptr::null_mut(),
    );
    assert!(err.is_ok(), "{contract}: code {}", err.code);
    out
}

fn init_failed(r: Result<(), LoaderError>) -> (String, String) {
    match r {
        Err(LoaderError::InitFailed { bundle, error }) => (bundle, error),
        other => panic!("expected InitFailed, got {other:?}"),
    }
}

#[test]
fn valid_plugin_loads_registers_vm_contract_and_dispatches() {
    let (rt, loader, _) = empty_runtime();
    load_dir(&loader, &rt, &write_out_bundle("writeout_ok")).unwrap();
    let iface = resolve(&rt, "writeout", 1);
    // SAFETY: a live registry interface.
    let dispatch_type = unsafe { (*iface).dispatch_type };
    assert_eq!(dispatch_type, DispatchType::VirtualMachine);
    assert_eq!(dispatch_i32(&rt, "writeout"), 0x2A);
}

#[test]
fn default_config_accepts_this_python_and_loader_is_named_python() {
    let loader = PythonLoader::default();
    assert_eq!(loader.loader_name(), "python");
    assert_eq!(
        loader.loader_language(),
        polyplug_abi::SupportedLanguage::Python
    );
    assert!(loader.supports_hot_reload());
    assert_eq!(loader.config().min_version, (3, 12));
    let expected_mode = if own_gil_runs_ctypes() {
        InterpreterMode::OwnGil
    } else {
        InterpreterMode::SharedGil
    };
    assert_eq!(loader.config().mode, expected_mode);
    assert_eq!(InterpreterMode::default(), expected_mode);
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PythonLoader>();
}

#[test]
fn version_too_old_is_init_failed_for_python() {
    let loader = PythonLoader::new(PythonConfig {
        min_version: (99, 0),
        ..PythonConfig::default()
    });
    let (rt, _) = runtime_with(loader.clone(), &[]);
    let (bundle, error) = init_failed(load_dir(&loader, &rt, &write_out_bundle("too_old")));
    assert_eq!(bundle, "python");
    assert!(error.contains("version") && error.contains("99"), "{error}");
}

#[test]
fn exception_in_dispatch_is_generic_with_traceback_in_the_logger() {
    let (rt, loader, logs) = empty_runtime();
    let src = plugin_source(
        "raiser@1",
        "def boom(impl, args, out, arena, alloc):\n    raise ValueError('dispatch boom')\n",
        "boom",
    );
    load_dir(&loader, &rt, &write_bundle("raiser", &src, &[]).1).unwrap();
    assert_eq!(
        call_i64(&rt, "raiser", 0, 1),
        Err(AbiErrorCode::Generic as u32)
    );
    let logs = logs.lock().unwrap();
    let line = logs
        .iter()
        .find(|(_, _, m)| m.contains("ValueError: dispatch boom"))
        .expect("traceback logged");
    assert!(
        line.2.contains("Traceback (most recent call last)") && line.2.contains("in boom"),
        "{}",
        line.2
    );
    assert_eq!(line.1, "raiser", "scope names the bundle");
}

#[test]
fn fn_id_out_of_range_is_function_not_available() {
    let (rt, loader, _) = empty_runtime();
    load_dir(&loader, &rt, &write_out_bundle("writeout_range")).unwrap();
    assert_eq!(
        call_i64(&rt, "writeout", 5, 0),
        Err(AbiErrorCode::FunctionNotAvailable as u32)
    );
}

#[test]
fn null_arena_reaches_the_guest_as_zero_and_alloc_falls_back_to_host() {
    let (rt, loader, _) = empty_runtime();
    let defs = "def probe(impl, args, out, arena, alloc):\n    put_i64(out, arena * 1000 + (1 if alloc(16, 0) != 0 else 0))\n";
    load_dir(
        &loader,
        &rt,
        &write_bundle("arena0", &plugin_source("arena0@1", defs, "probe"), &[]).1,
    )
    .unwrap();
    assert_eq!(
        call_i64(&rt, "arena0", 0, 0),
        Ok(1),
        "arena int 0, host alloc non-zero"
    );
}

#[test]
fn broken_python_and_bad_init_results_are_init_failed_with_cause() {
    let (rt, loader, _) = empty_runtime();
    let cases: &[(&str, &str, &str)] = &[
        ("syntax_err", "def broken(:\n", "SyntaxError"),
        (
            "import_err",
            "import no_such_module_xyz\n",
            "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        (
            "raising_init",
            "def polyplug_init(host, ctx):\n    raise RuntimeError('init exploded')\n",
            "RuntimeError: init exploded",
        ),
        (
            "returns_none",
            "def polyplug_init(host, ctx):\n    return None\n",
            "polyplug_init must return",
        ),
        (
            "empty_regs",
            "class Ok:\n    code = 0\ndef polyplug_init(host, ctx):\n    return ([], Ok())\n",
            "no contracts",
        ),
        (
            "three_tuple",
            "def polyplug_init(host, ctx):\n    return (1, 2, 3)\n",
            "got 3 elements",
        ),
        (
            "bad_code",
            "class E:\n    code = 7\ndef polyplug_init(host, ctx):\n    return ([], E())\n",
            "AbiError code 7",
        ),
        (
            "exit_in_init",
            "import sys\ndef polyplug_init(host, ctx):\n    sys.exit(2)\n",
            "SystemExit: 2",
        ),
    ];
    for (name, src, needle) in cases {
        let (_, dir) = write_bundle(name, src, &[]);
        let (bundle, error) = init_failed(load_dir(&loader, &rt, &dir));
        assert_eq!(&bundle, name);
        assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
    }
}

#[test]
fn missing_init_is_init_symbol_missing() {
    let (rt, loader, _) = empty_runtime();
    let (_, dir) = write_bundle("no_init", "X = 1\n", &[]);
    match load_dir(&loader, &rt, &dir) {
        Err(LoaderError::InitSymbolMissing { bundle }) => assert_eq!(bundle, "no_init"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_registration_shapes_name_the_problem() {
    let (rt, loader, _) = empty_runtime();
    let reg = |body: &str| {
        format!("class Ok:\n    code = 0\ndef f(*a):\n    pass\ndef polyplug_init(host, ctx):\n    return ({body}, Ok())\n")
    };
    let cases = [
        (
            "regs_not_list",
            reg("{'contract': 'x@1'}"),
            "must be a list of dicts",
        ),
        (
            "no_contract",
            reg("[{'factory': f, 'functions': []}]"),
            "missing string `contract` key",
        ),
        (
            "bad_contract",
            reg("[{'contract': 'nover', 'factory': f, 'functions': []}]"),
            "invalid contract string `nover`",
        ),
        (
            "bad_major",
            reg("[{'contract': 'x@abc', 'factory': f, 'functions': []}]"),
            "is not a u32",
        ),
        (
            "no_factory",
            reg("[{'contract': 'x@1', 'functions': []}]"),
            "missing `factory` callable",
        ),
        (
            "factory_not_callable",
            reg("[{'contract': 'x@1', 'factory': 3, 'functions': []}]"),
            "`factory` for `x@1` is not callable",
        ),
        (
            "fns_not_list",
            reg("[{'contract': 'x@1', 'factory': f, 'functions': f}]"),
            "`functions` for `x@1` must be a list",
        ),
        (
            "fn_not_callable",
            reg("[{'contract': 'x@1', 'factory': f, 'functions': [f, 5]}]"),
            "`functions[1]` for `x@1` is not callable",
        ),
        (
            "entry_not_dict",
            reg("[42]"),
            "missing string `contract` key",
        ),
        (
            "factory_raises",
            format!(
                "{}\ndef bad(host):\n    raise KeyError('nope')\n",
                reg("[{'contract': 'x@1', 'factory': bad, 'functions': []}]")
            ),
            "failed while building the default instance: KeyError: 'nope'",
        ),
    ];
    for (name, src, needle) in cases {
        let (_, dir) = write_bundle(name, &src, &[]);
        let (bundle, error) = init_failed(load_dir(&loader, &rt, &dir));
        assert_eq!(bundle, name);
        assert!(error.contains(needle), "{name}: {error:?} lacks {needle:?}");
    }
}

#[test]
fn missing_file_and_empty_file_field() {
    let (rt, loader, _) = empty_runtime();
    let (_, dir) = write_bundle("gone_file", "X = 1\n", &[]);
    std::fs::remove_file(dir.join("gone_file.py")).unwrap();
    let (_, error) = init_failed(load_dir(&loader, &rt, &dir));
    assert!(error.contains("file does not exist"), "{error}");
    let mut manifest = polyplug::loader::parse_manifest(&dir).unwrap();
    manifest.file.clear();
    match loader.load(&manifest, &BundleSource::Path(dir.clone()), &rt) {
        Err(LoaderError::ManifestMissingFile { bundle }) => assert_eq!(bundle, "gone_file"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_sequential_loads_and_a_good_load_after_a_failed_one() {
    let (rt, loader, _) = empty_runtime();
    let (_, bad) = write_bundle("seq_bad", "def (\n", &[]);
    assert!(load_dir(&loader, &rt, &bad).is_err());
    for i in 0..8 {
        let name = format!("seq_{i}");
        let src = plugin_source(
            &format!("seq{i}@1"),
            "def one(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n",
            "one",
        );
        load_dir(&loader, &rt, &write_bundle(&name, &src, &[]).1).unwrap();
        assert_eq!(call_i64(&rt, &format!("seq{i}"), 0, 0), Ok(1));
    }
}

#[test]
fn init_context_carries_the_canonical_bundle_dir() {
    let (rt, loader, _) = empty_runtime();
    let src = r#"import ctypes
from polyplug_abi import BundleInitContext
class Ok:
    code = 0
SEEN = {}
class Impl:
    def __init__(self, host):
        pass
def path_len(impl, args, out, arena, alloc):
    ctypes.c_int64.from_address(out).value = len(SEEN['path'])
def polyplug_init(host, ctx):
    c = BundleInitContext.from_address(ctx)
    SEEN['path'] = ctypes.string_at(c.bundle_path.ptr, c.bundle_path.len).decode()
    SEEN['id'] = c.bundle_id
    assert SEEN['path'] == __import__('os').path.dirname(__file__), (SEEN['path'], __file__)
    return ([{'contract': 'ctxpath@1', 'factory': Impl, 'functions': [path_len]}], Ok())
"#;
    let (_, dir) = write_bundle_with_sdk("ctx_path", src, &[]);
    load_dir(&loader, &rt, &dir).unwrap();
    let canon = dir.canonicalize().unwrap();
    assert_eq!(
        call_i64(&rt, "ctxpath", 0, 0),
        Ok(canon.to_string_lossy().len() as i64)
    );
}

#[test]
fn registrations_may_come_from_a_helper_module_in_the_bundle_dir() {
    let (rt, loader, _) = empty_runtime();
    let helper = plugin_source(
        "split@1",
        "def f(impl, args, out, arena, alloc):\n    put_i64(out, 0x2A if alloc(16, 0) else -1)\n",
        "f",
    );
    let (_, dir) = write_bundle(
        "splitmod",
        "from _splitmod_helper import polyplug_init\n",
        &[("_splitmod_helper.py", &helper)],
    );
    load_dir(&loader, &rt, &dir).unwrap();
    assert_eq!(call_i64(&rt, "split", 0, 0), Ok(0x2A));
}

#[test]
fn unload_then_load_runs_fresh_code() {
    let (rt, _, _) = empty_runtime();
    let src = |v: i64| {
        plugin_source("fresh@1", &format!("import helper\ndef f(impl, args, out, arena, alloc):\n    put_i64(out, helper.VALUE + {v})\n"), "f")
    };
    let (_, dir) = write_bundle("fresh", &src(0), &[("helper.py", "VALUE = 100\n")]);
    rt.load_bundle(&dir).unwrap();
    assert_eq!(call_i64(&rt, "fresh", 0, 0), Ok(100));
    let stale = resolve(&rt, "fresh", 1);
    rt.unload_bundle(polyplug_utils::BundleId::new("fresh"))
        .unwrap();
    // A host that kept the old interface gets StaleHandle, not a crash.
    let mut out = 0i64;
    let err = vm_call(
        stale,
        null_instance(stale),
        0,
        std::ptr::null(),
        (&mut out as *mut i64).cast(),
        std::ptr::null_mut(),
    );
    assert_eq!(err.code, AbiErrorCode::StaleHandle as u32);
    std::fs::write(dir.join("helper.py"), "VALUE = 200\n").unwrap();
    std::fs::write(dir.join("fresh.py"), src(5)).unwrap();
    rt.load_bundle(&dir).unwrap();
    assert_eq!(
        call_i64(&rt, "fresh", 0, 0),
        Ok(205),
        "both the entry and its helper were re-imported"
    );
}

/// Called by the outer plugin function through ctypes: dispatches fn 1 of the same
/// contract with a null arena (an ABI-level nested call on the owner thread).
extern "C" fn nested_trampoline(iface: usize) -> i64 {
    let iface = iface as *const polyplug_abi::GuestContractInterface;
    let mut out: i64 = 0;
    let err = vm_call(
        iface,
        null_instance(iface),
        1,
        std::ptr::null(),
        (&mut out as *mut i64).cast(),
        std::ptr::null_mut(),
    );
    if err.code == 0 {
        out
    } else {
        -(err.code as i64)
    }
}

#[test]
fn nested_dispatch_keeps_the_outer_arena() {
    let (rt, loader, _) = empty_runtime();
    let defs = r#"
TRAMP = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_size_t)
STATE = {}
def outer(impl, args, out, arena, alloc):
    inner = TRAMP(STATE['tramp'])(STATE['iface'])
    p = alloc(64, arena)
    put_i64(out, p)
    put_i64(out + 8, inner)
def inner(impl, args, out, arena, alloc):
    put_i64(out, 1000 + arena)
def setup(impl, args, out, arena, alloc):
    STATE['tramp'] = i64_at(args)
    STATE['iface'] = i64_at(args + 8)
"#;
    load_dir(
        &loader,
        &rt,
        &write_bundle(
            "nested_arena",
            &plugin_source("nested@1", defs, "outer, inner, setup"),
            &[],
        )
        .1,
    )
    .unwrap();
    let iface = resolve(&rt, "nested", 1);
    let setup = [
        nested_trampoline as extern "C" fn(usize) -> i64 as usize as i64,
        iface as usize as i64,
    ];
    let err = vm_call(
        iface,
        null_instance(iface),
        2,
        setup.as_ptr().cast(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    assert!(err.is_ok());
    let mut buf = vec![0u8; 4096];
    let mut arena = CallArena::new(&mut buf, host(&rt));
    let mut out = [0i64; 2];
    let err = vm_call(
        iface,
        null_instance(iface),
        0,
        std::ptr::null(),
        out.as_mut_ptr().cast(),
        &mut arena,
    );
    assert!(err.is_ok(), "{}", err.code);
    let base = buf.as_ptr() as i64;
    assert!(
        out[0] >= base && out[0] + 64 <= base + 4096,
        "outer alloc {:#x} not in the outer arena",
        out[0]
    );
    assert_eq!(out[1], 1000, "the nested call saw a null arena");
}

#[test]
fn concurrent_dispatch_keeps_arenas_apart() {
    let (rt, loader, _) = empty_runtime();
    let defs = "def grab(impl, args, out, arena, alloc):\n    put_i64(out, alloc(32, arena))\n";
    load_dir(
        &loader,
        &rt,
        &write_bundle("arenas", &plugin_source("arenas@1", defs, "grab"), &[]).1,
    )
    .unwrap();
    let iface = resolve(&rt, "arenas", 1) as usize;
    let host = host(&rt) as usize;
    within("arenas", || {
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(move || {
                    let iface = iface as *const polyplug_abi::GuestContractInterface;
                    let mut buf = vec![0u8; 64 * 1024];
                    let range = buf.as_ptr() as i64..buf.as_ptr() as i64 + buf.len() as i64;
                    let mut arena = CallArena::new(&mut buf, host as *const _);
                    for _ in 0..500 {
                        arena.reset();
                        let mut out = 0i64;
                        let err = vm_call(
                            iface,
                            null_instance(iface),
                            0,
                            std::ptr::null(),
                            (&mut out as *mut i64).cast(),
                            &mut arena,
                        );
                        assert!(err.is_ok());
                        assert!(
                            range.contains(&out),
                            "allocation {out:#x} escaped this thread's arena"
                        );
                    }
                });
            }
        });
    });
}

#[test]
fn two_runtimes_with_same_named_bundles_stay_independent() {
    let mk = |v: u32| {
        let src = plugin_source("twin@1", "import shared_helper\ndef f(impl, args, out, arena, alloc):\n    put_i64(out, shared_helper.VALUE)\n", "f");
        write_bundle(
            "twin",
            &src,
            &[("shared_helper.py", &format!("VALUE = {v:#x}\n"))],
        )
        .0
    };
    let (rt1, _) = runtime_with(PythonLoader::default(), &[mk(0x11)]);
    let (rt2, _) = runtime_with(PythonLoader::default(), &[mk(0x22)]);
    assert_eq!(call_i64(&rt1, "twin", 0, 0), Ok(0x11));
    assert_eq!(call_i64(&rt2, "twin", 0, 0), Ok(0x22));
}

fn inline_manifest(name: &str) -> ManifestData {
    let dir = write_bundle(name, "", &[]).1;
    let mut m = polyplug::loader::parse_manifest(&dir).unwrap();
    m.file = "<inline>".into();
    m
}

const INLINE: &str = "import ctypes\nclass Ok:\n    code = 0\nclass Impl:\n    def __init__(self, host):\n        pass\ndef f(impl, args, out, arena, alloc):\n    ctypes.c_int32.from_address(out).value = 0x7B\ndef polyplug_init(host, ctx):\n    return ([{'contract': 'code.contract@1', 'factory': Impl, 'functions': [f]}], Ok())\n";

#[test]
fn code_and_bytes_sources_load_and_dispatch() {
    let (rt, _, _) = empty_runtime();
    rt.load_bundle_from_source(
        inline_manifest("code-plugin"),
        BundleSource::Code(INLINE.into()),
    )
    .unwrap();
    assert_eq!(dispatch_i32(&rt, "code.contract"), 0x7B);
    let (rt2, _, _) = empty_runtime();
    rt2.load_bundle_from_source(
        inline_manifest("bytes_plugin"),
        BundleSource::Bytes(INLINE.as_bytes().to_vec()),
    )
    .unwrap();
    resolve(&rt2, "code.contract", 1);
}

#[test]
fn invalid_utf8_bytes_are_a_structured_error() {
    let (rt, _, _) = empty_runtime();
    let err = rt
        .load_bundle_from_source(
            inline_manifest("bad_utf8_plugin"),
            BundleSource::Bytes(vec![0xff, 0xfe, b'x']),
        )
        .unwrap_err();
    match err {
        polyplug::error::RuntimeError::Loader(LoaderError::InvalidSourceEncoding {
            loader,
            source_kind,
            bundle,
        }) => {
            assert_eq!(
                (loader, source_kind, bundle.as_str()),
                ("python", "bytes", "bad_utf8_plugin")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn c_exports_create_a_loader_a_c_host_can_register() {
    use polyplug_subinterp::ffi::{
        polyplug_python_loader_create, polyplug_python_loader_free, PolyplugPythonConfig,
    };
    let cfg = |v: &'static str| PolyplugPythonConfig {
        min_version_ptr: v.as_ptr(),
        min_version_len: v.len(),
    };
    // SAFETY: a null config.
    assert!(unsafe { polyplug_python_loader_create(std::ptr::null()) }.is_null());
    // SAFETY: a valid config with a malformed version.
    assert!(unsafe { polyplug_python_loader_create(&cfg("three")) }.is_null());
    // SAFETY: freeing null is a no-op.
    unsafe { polyplug_python_loader_free(std::ptr::null_mut()) };
    // SAFETY: a valid config.
    let doomed = unsafe { polyplug_python_loader_create(&cfg("3.12")) };
    assert!(!doomed.is_null());
    // SAFETY: `doomed` came from polyplug_python_loader_create and is freed once.
    unsafe { polyplug_python_loader_free(doomed) };
    // SAFETY: a valid config; the returned pointer is the double-boxed loader.
    let raw = unsafe { polyplug_python_loader_create(&cfg("3.12")) };
    // SAFETY: `raw` came from polyplug_python_loader_create and is consumed once here,
    // as HostApi.register_loader would.
    let loader: Box<dyn BundleLoader> =
        *unsafe { Box::from_raw(raw as *mut Box<dyn BundleLoader>) };
    let rt = polyplug::runtime_builder::RuntimeBuilder::new()
        .build()
        .unwrap();
    rt.register_loader(loader).unwrap();
    rt.load_bundle(&write_out_bundle("c_host")).unwrap();
    assert_eq!(dispatch_i32(&rt, "writeout"), 0x2A);
}
