// Shared by the build scripts of `interp-pool` and the root loader package (via `#[path]`).
//
// pyo3-ffi's own build script has already chosen the interpreter (PYO3_PYTHON; see
// `.cargo/config.toml` and `tools/python`). Here we refuse anything older than 3.12 or
// without a shared libpython, emit pyo3's version cfgs (`Py_3_13`, ...) for the few C APIs
// that differ between 3.12 and 3.13, and bake an rpath to libpython into every binary, test
// and bench of the package, so nobody has to set LD_LIBRARY_PATH by hand.

/// Oldest CPython with own-GIL subinterpreters (`Py_NewInterpreterFromConfig`, PEP 684).
/// On 3.12 `_ctypes` still refuses own-GIL interpreters, so the loader defaults to
/// `shared_gil` there (src/config.rs).
const MIN_MINOR: u8 = 12;

pub fn configure() {
    let config = pyo3_build_config::get();
    let v = config.version();
    let exe = config.executable().unwrap_or("<unknown>");
    if (v.major, v.minor) < (3, MIN_MINOR) {
        eprintln!(
            "error: polyplug-subinterp needs CPython >= 3.{MIN_MINOR} with a shared libpython, \
             but found Python {}.{} at {exe}; install python3.13 (or newer) or point \
             PYO3_PYTHON at one (3.12 works in shared_gil mode).",
            v.major, v.minor
        );
        std::process::exit(1);
    }
    if !config.shared() {
        eprintln!(
            "error: polyplug-subinterp needs a shared libpython, but Python {}.{} at {exe} \
             was built without --enable-shared; point PYO3_PYTHON at a shared build.",
            v.major, v.minor
        );
        std::process::exit(1);
    }
    // `cargo:rustc-cfg=Py_3_N` for every minor up to the one found, plus the matching
    // `rustc-check-cfg` declarations (pyo3_build_config::print_expected_cfgs), so
    // `#[cfg(Py_3_13)]` compiles without `unexpected_cfgs` warnings.
    pyo3_build_config::use_pyo3_cfgs();
    if let Some(dir) = config.lib_dir() {
        // Applies to this package's binaries, tests, benches and examples.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    // The soname to re-open RTLD_GLOBAL when this code is itself dlopen'ed (a C host
    // loading our cdylib), so that extension modules such as _ctypes resolve Py* symbols.
    let lib = config.lib_name().unwrap_or("python3");
    println!("cargo:rustc-env=INTERP_POOL_LIBPYTHON=lib{lib}.so.1.0");
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build_python.rs");
}
