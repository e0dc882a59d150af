//! The C exports, with the names and meaning of polyplug_python 0.1.3's `ffi.rs`, so a C
//! host switches loaders by relinking. Behind the default `c-exports` feature, since both
//! loaders define the same symbols: a binary that links polyplug_python must not link
//! these (the reference bench uses no item of this crate, so the linker pulls none in;
//! a host linking both builds this crate with `default-features = false`).
//!
//! Every export runs its body under `guarded`: a Rust panic never unwinds into the C
//! caller; it is logged and the export returns null / writes an `AbiError` Panic / does
//! nothing, as fits its signature.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use polyplug::loader::BundleLoader;
use polyplug_abi::{
    AbiError, AbiErrorCode, CallArena, GuestContractInstance, HostContractInstance,
    HostContractInterface, StringView, VmLoaderData,
};

use crate::{PythonConfig, PythonLoader};

/// Configuration passed by C hosts to [`polyplug_python_loader_create`]: polyplug_python
/// 0.1.3's layout, kept so a C host switches loaders by relinking. Every other setting is
/// `PythonConfig::default()`'s, so a C host's bundles run with
/// [`Dispatch::Post`](crate::Dispatch::Post): it cannot choose `Direct` yet (README,
/// "Direct dispatch").
#[repr(C)]
#[derive(Debug)]
pub struct PolyplugPythonConfig {
    /// UTF-8 `"major.minor"`: the oldest CPython to accept.
    pub min_version_ptr: *const u8,
    /// Length of `min_version_ptr` in bytes.
    pub min_version_len: usize,
}

/// The scalar callback a Python (ctypes) host registers host contracts through: ctypes
/// cannot produce callbacks that take or return structs by value.
#[repr(C)]
#[derive(Debug)]
pub struct PolyplugPythonHostDispatchBridge {
    /// `u32 callback(fn_id, args, out)`, returning an `AbiErrorCode`.
    pub callback: Option<unsafe extern "C" fn(u32, *const c_void, *mut c_void) -> u32>,
}

/// Creates a loader; returns a double-boxed `Box<dyn BundleLoader>` for
/// `HostApi.register_loader`, or null on a null or malformed config.
///
/// # Safety
/// `config` is null or points to a valid `PolyplugPythonConfig` whose
/// `min_version_ptr` points to `min_version_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn polyplug_python_loader_create(
    config: *const PolyplugPythonConfig,
) -> *mut c_void {
    guarded(
        "polyplug_python_loader_create",
        std::ptr::null_mut(),
        || {
            // SAFETY: `config` as our caller passed it; its contract is this function's.
            unsafe { loader_create(config) }
        },
    )
}

/// The body of [`polyplug_python_loader_create`].
///
/// # Safety
/// As for [`polyplug_python_loader_create`].
unsafe fn loader_create(config: *const PolyplugPythonConfig) -> *mut c_void {
    // SAFETY: null or valid, per the contract.
    let Some(cfg) = (unsafe { config.as_ref() }) else {
        return std::ptr::null_mut();
    };
    if cfg.min_version_ptr.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: per the contract, min_version_len readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(cfg.min_version_ptr, cfg.min_version_len) };
    let Some(min_version) = std::str::from_utf8(bytes).ok().and_then(parse_version) else {
        tracing::error!("polyplug_python_loader_create: min_version must be \"major.minor\"");
        return std::ptr::null_mut();
    };
    let loader: Box<dyn BundleLoader> = Box::new(PythonLoader::new(PythonConfig {
        min_version,
        ..PythonConfig::default()
    }));
    Box::into_raw(Box::new(loader)) as *mut c_void
}

/// Frees a loader from [`polyplug_python_loader_create`]; null is a no-op.
///
/// # Safety
/// `ptr` is null or came from `polyplug_python_loader_create` and was not freed (nor
/// handed to `HostApi.register_loader`, which takes ownership).
#[no_mangle]
pub unsafe extern "C" fn polyplug_python_loader_free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: produced by Box::into_raw(Box<Box<dyn BundleLoader>>) above and not freed,
    // per the contract. Dropping the last handle unloads its bundles (under the guard).
    let loader = unsafe { Box::from_raw(ptr as *mut Box<dyn BundleLoader>) };
    guarded("polyplug_python_loader_free", (), move || drop(loader));
}

/// VM-dispatch trampoline for host contracts implemented by a Python (ctypes) host:
/// forwards to the scalar callback in the `PolyplugPythonHostDispatchBridge` carried
/// as `loader_data`.
///
/// # Safety
/// `loader_data.data` is null or a live bridge; `out_err` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn polyplug_python_host_vm_dispatch(
    loader_data: VmLoaderData,
    _instance: GuestContractInstance,
    fn_id: u32,
    args: *const (),
    out: *mut (),
    _arena: *mut CallArena,
    out_err: *mut AbiError,
) {
    let panicked = abi_static(AbiErrorCode::Panic, b"python host dispatch bridge panicked");
    let result = guarded("polyplug_python_host_vm_dispatch", panicked, || {
        // SAFETY: the arguments as our caller passed them; its contract is this function's.
        unsafe { host_vm_dispatch(loader_data, fn_id, args, out) }
    });
    if !out_err.is_null() {
        // SAFETY: non-null and writable per the ABI.
        unsafe { out_err.write(result) };
    }
}

/// The body of [`polyplug_python_host_vm_dispatch`]: the bridge's result.
///
/// # Safety
/// `loader_data.data` is null or a live bridge.
unsafe fn host_vm_dispatch(
    loader_data: VmLoaderData,
    fn_id: u32,
    args: *const (),
    out: *mut (),
) -> AbiError {
    let bridge = loader_data.data as *const PolyplugPythonHostDispatchBridge;
    // SAFETY: null or a live bridge, per the contract.
    match unsafe { bridge.as_ref() }.map(|b| b.callback) {
        None => abi_static(
            AbiErrorCode::InvalidPointer,
            b"python host dispatch bridge is null",
        ),
        Some(None) => abi_static(
            AbiErrorCode::InvalidPointer,
            b"python host dispatch bridge has no callback",
        ),
        Some(Some(cb)) => {
            // SAFETY: the ctypes callback installed by the generated host factory;
            // args/out are forwarded untouched.
            match unsafe { cb(fn_id, args.cast(), out.cast()) } {
                0 => AbiError::ok(),
                code => AbiError {
                    code,
                    message: StringView::from_static(b"python host contract returned error"),
                },
            }
        }
    }
}

/// `create_instance` for a ctypes host contract: the instance is the interface's
/// `user_data`.
///
/// # Safety
/// `this` is null or a live interface; `out_instance` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn polyplug_python_host_create_instance(
    this: *const HostContractInterface,
    _args: *const c_void,
    out_instance: *mut HostContractInstance,
) {
    let instance = guarded(
        "polyplug_python_host_create_instance",
        HostContractInstance::null(),
        // SAFETY: null or a live interface, per the contract.
        || match unsafe { this.as_ref() } {
            Some(iface) => HostContractInstance {
                data: iface.user_data,
            },
            None => HostContractInstance::null(),
        },
    );
    if !out_instance.is_null() {
        // SAFETY: non-null and writable per the ABI.
        unsafe { out_instance.write(instance) };
    }
}

/// `destroy_instance` for a ctypes host contract: nothing to free.
///
/// # Safety
/// None beyond the ABI's; the arguments are ignored.
#[no_mangle]
pub unsafe extern "C" fn polyplug_python_host_destroy_instance(
    _this: *const HostContractInterface,
    _instance: HostContractInstance,
) {
    // Nothing that could panic runs here; guarded like every export all the same.
    guarded("polyplug_python_host_destroy_instance", (), || {});
}

/// Runs an export's body; a panic is logged and becomes `on_panic`, so it never unwinds
/// into the C caller.
#[cfg_attr(
    not(feature = "c-exports"),
    allow(dead_code, reason = "only the exports use it")
)]
fn guarded<R>(export: &'static str, on_panic: R, body: impl FnOnce() -> R) -> R {
    // AssertUnwindSafe: after a panic nothing of the body's state is used again; the
    // caller only gets `on_panic`.
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string payload)");
        tracing::error!(export, "Rust panic in a C export: {what}");
        on_panic
    })
}

fn abi_static(code: AbiErrorCode, message: &'static [u8]) -> AbiError {
    AbiError {
        code: code as u32,
        message: StringView::from_static(message),
    }
}

/// `"major.minor"` → `(major, minor)`.
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_in_an_export_body_becomes_its_fallback() {
        assert_eq!(guarded("test", 7, || 1), 1);
        let null = guarded("test", std::ptr::null_mut::<u8>(), || panic!("boom"));
        assert!(null.is_null());
        let msg = String::from("owned payload");
        assert_eq!(guarded("test", 3u32, move || panic!("{msg}")), 3);
    }
}
