#[path = "build_python.rs"]
mod build_python;

fn main() {
    build_python::configure();
    host_state_shim();
}

/// Compiles `csrc/host_state.c` (direct dispatch's host-thread states, `capi/attach.rs`)
/// against the headers of the Python pyo3 chose: it needs CPython's internal runtime header
/// for the PyGILState slot's key, so it must match the libpython we link exactly.
fn host_state_shim() {
    let config = pyo3_build_config::get();
    let exe = config
        .executable()
        .expect("pyo3-build-config names no Python executable");
    let out = std::process::Command::new(exe)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .expect("cannot run the Python executable for its include directory");
    let include = String::from_utf8(out.stdout).expect("include path is not UTF-8");
    cc::Build::new()
        .file("csrc/host_state.c")
        .include(include.trim())
        .warnings(true)
        .compile("interp_pool_host_state");
    println!("cargo:rerun-if-changed=csrc/host_state.c");
}
