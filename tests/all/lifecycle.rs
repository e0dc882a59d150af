//! Instances, unload/reload, guest code that tries to end the process, and the runtime's
//! init stack after failed loads.

use polyplug_abi::{AbiErrorCode, GuestContractInstance};

use crate::support::*;

const COUNTER: &str = "class Impl:\n    def __init__(self, host):\n        self.n = 0\ndef inc(impl, args, out, arena, alloc):\n    impl.n += i64_at(args)\n    put_i64(out, impl.n)\n";

fn counter_src(contract: &str, factory_fails_after: i64) -> String {
    let defs = format!("{COUNTER}\nMADE = [0]\ndef make(host):\n    MADE[0] += 1\n    if MADE[0] > {factory_fails_after}:\n        raise RuntimeError('factory refuses')\n    return Impl(host)\n");
    plugin_source(contract, &defs, "inc").replace("\"factory\": Impl", "\"factory\": make")
}

fn create(
    iface: *const polyplug_abi::GuestContractInterface,
    rt: &polyplug::runtime::Runtime,
) -> GuestContractInstance {
    let mut inst = GuestContractInstance::null();
    // SAFETY: a live registry interface, valid while its bundle is loaded.
    let iface = unsafe { &*iface };
    // SAFETY: a VM-dispatch interface: `vm` is the union's active field.
    let data = unsafe { iface.dispatch.vm }.loader_data;
    // SAFETY: the interface's own entry point with its own loader data; `inst` is writable.
    unsafe { (iface.create_instance)(data, host(rt), std::ptr::null(), &mut inst) };
    inst
}

fn inc(
    iface: *const polyplug_abi::GuestContractInterface,
    inst: GuestContractInstance,
    by: i64,
) -> Result<i64, u32> {
    call_on(iface, inst, 0, by).map_err(|e| e.code)
}

#[test]
fn instances_are_numbered_isolated_destroyable_and_factory_failure_is_null() {
    let (rt, loader, logs) = empty_runtime();
    // The default impl is made at load (1), then two instances (2, 3); the 4th call fails.
    load_dir(
        &loader,
        &rt,
        &write_bundle("inst", &counter_src("inst@1", 3), &[]).1,
    )
    .unwrap();
    let iface = resolve(&rt, "inst", 1);
    let (a, b) = (create(iface, &rt), create(iface, &rt));
    // Numbered process-wide (a reload's old version tells its successor's apart by id).
    let (ia, ib) = (a.data as usize, b.data as usize);
    assert!(ia != 0 && ib > ia, "fresh ids, in order: {ia}, {ib}");
    assert_eq!(inc(iface, a, 5), Ok(5));
    assert_eq!(inc(iface, b, 1), Ok(1));
    assert_eq!(inc(iface, a, 1), Ok(6));
    assert_eq!(
        inc(iface, null_instance(iface), 7),
        Ok(7),
        "id 0 is the default impl"
    );
    let failed = create(iface, &rt);
    assert!(
        failed.data.is_null(),
        "factory failure gives a null instance"
    );
    assert!(logs
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, m)| m.contains("factory refuses")));
    // SAFETY: a live registry interface, valid while its bundle is loaded.
    let iface_ref = unsafe { &*iface };
    // SAFETY: a VM-dispatch interface: `vm` is the union's active field.
    let data = unsafe { iface_ref.dispatch.vm }.loader_data;
    let destroy = iface_ref.destroy_instance;
    // SAFETY: the interface's own entry point with its own loader data.
    unsafe { destroy(data, host(&rt), a) };
    // SAFETY: as above; the default (null) instance is a no-op.
    unsafe { destroy(data, host(&rt), null_instance(iface)) };
    assert_eq!(
        inc(iface, a, 1),
        Err(AbiErrorCode::FunctionNotAvailable as u32),
        "destroyed id"
    );
    assert_eq!(inc(iface, b, 1), Ok(2));
    assert_eq!(
        inc(iface, null_instance(iface), 1),
        Ok(8),
        "destroying id 0 is a no-op"
    );
}

#[test]
fn exit_interrupt_and_recursion_in_a_plugin_are_errors_not_the_end() {
    let (rt, loader, _) = empty_runtime();
    let defs = "import sys, os\ndef quit(impl, args, out, arena, alloc):\n    sys.exit(1)\ndef intr(impl, args, out, arena, alloc):\n    raise KeyboardInterrupt\ndef rec(impl, args, out, arena, alloc):\n    rec(impl, args, out, arena, alloc)\ndef fine(impl, args, out, arena, alloc):\n    put_i64(out, 99)\n";
    load_dir(
        &loader,
        &rt,
        &write_bundle(
            "rude",
            &plugin_source("rude@1", defs, "quit, intr, rec, fine"),
            &[],
        )
        .1,
    )
    .unwrap();
    for fn_id in 0..3 {
        assert_eq!(
            call_i64(&rt, "rude", fn_id, 0),
            Err(AbiErrorCode::Generic as u32)
        );
    }
    assert_eq!(call_i64(&rt, "rude", 3, 0), Ok(99));
}

#[test]
fn unload_leaves_other_bundles_working_and_reload_works() {
    let (rt, _logs) = fixture_runtime();
    let (_, dir) = write_bundle(
        "solo",
        &plugin_source(
            "solo@1",
            "def f(impl, args, out, arena, alloc):\n    put_i64(out, 3)\n",
            "f",
        ),
        &[],
    );
    rt.load_bundle(&dir).unwrap();
    assert_eq!(call_i64(&rt, "solo", 0, 0), Ok(3));
    rt.unload_bundle(polyplug_utils::BundleId::new("solo"))
        .unwrap();
    assert!(rt.find_guest_contract(contract_id("solo", 1), 0).is_err());
    let calc = resolve(&rt, "calculator", 1);
    let args = [20i64, 22];
    let mut out = 0i64;
    assert!(vm_call(
        calc,
        null_instance(calc),
        0,
        args.as_ptr().cast(),
        (&mut out as *mut i64).cast(),
        std::ptr::null_mut()
    )
    .is_ok());
    assert_eq!(out, 42);
    rt.load_bundle(&dir).unwrap();
    assert_eq!(call_i64(&rt, "solo", 0, 0), Ok(3));
}

#[test]
fn init_window_is_closed_after_failed_loads() {
    let (rt, loader, _) = empty_runtime();
    let good = plugin_source(
        "visible@1",
        "def f(impl, args, out, arena, alloc):\n    put_i64(out, 1)\n",
        "f",
    );
    load_dir(&loader, &rt, &write_bundle("visible", &good, &[]).1).unwrap();
    // Fail at every stage: import, init, parsing, factory, and registration itself
    // (the same contract twice in one bundle: DuplicateProvider).
    let dup = plugin_source("dupe@1", "def f(*a):\n    pass\n", "f").replace(
        "return ([{",
        "return ([{\"contract\": \"dupe@1\", \"factory\": Impl, \"functions\": [f]}, {",
    );
    for (name, src) in [
        ("fail_syntax", "def (:\n".to_owned()),
        (
            "fail_init",
            "def polyplug_init(h, c):\n    raise ValueError('x')\n".to_owned(),
        ),
        (
            "fail_shape",
            "def polyplug_init(h, c):\n    return 1\n".to_owned(),
        ),
        ("fail_dupe", dup),
    ] {
        let r = load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1);
        assert!(r.is_err(), "{name} should fail");
    }
    // Were a window left open on this thread, HostApi lookups here would only see the
    // failed bundle's (empty) declared dependencies.
    let h = host(&rt);
    // SAFETY: the runtime's live HostApi.
    let find = unsafe { (*h).find_guest_contract };
    // SAFETY: polyplug's self-passing ABI.
    let handle = unsafe { find(h, contract_id("visible", 1), 0) };
    assert!(
        !handle.is_null(),
        "lookup on the loading thread is unrestricted again"
    );
    assert_eq!(call_i64(&rt, "visible", 0, 0), Ok(1));
}
