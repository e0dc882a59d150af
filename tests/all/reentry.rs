//! Plugin→plugin calls through ctypes CFUNCTYPE (the caller's thread state is detached
//! first), including A→B→A across two interpreters and the nesting cap.

use polyplug_abi::AbiErrorCode;
use polyplug_subinterp::{PythonConfig, PythonLoader};

use crate::support::*;

/// Bundles `pp_a`/`pp_b`: `ping(n)` returns `n` by bouncing n times between them.
pub(crate) fn ping_pong(loader: &PythonLoader, rt: &polyplug::runtime::Runtime) {
    for (me, other) in [("pa", "pb"), ("pb", "pa")] {
        let defs = format!(
            "import peer, threading\nTHREADS = set()\nOTHER = {other_id}\ndef ping(impl, args, out, arena, alloc):\n    THREADS.add(threading.get_ident())\n    n = i64_at(args)\n    put_i64(out, 0 if n == 0 else peer.call_i64(impl.host, OTHER, 0, n - 1) + 1)\ndef threads(impl, args, out, arena, alloc):\n    put_i64(out, len(THREADS))\n",
            other_id = contract_id(other, 1)
        );
        let src = plugin_source(&format!("{me}@1"), &defs, "ping, threads");
        let (_, dir) = write_bundle_with_sdk(&format!("pp_{me}"), &src, &[("peer.py", PEER_PY)]);
        load_dir(loader, rt, &dir).unwrap();
    }
}

#[test]
fn a_b_a_across_two_interpreters_through_ctypes() {
    within("a-b-a", || {
        let (rt, loader, _) = empty_runtime();
        ping_pong(&loader, &rt);
        assert_eq!(call_i64(&rt, "pa", 0, 1), Ok(1));
        assert_eq!(call_i64(&rt, "pa", 0, 21), Ok(21));
        assert_eq!(call_i64(&rt, "pb", 0, 30), Ok(30));
        // Every level ran on each bundle's own thread.
        assert_eq!(call_i64(&rt, "pa", 1, 0), Ok(1));
        assert_eq!(call_i64(&rt, "pb", 1, 0), Ok(1));
    });
}

#[test]
fn nesting_cap_is_an_error_and_both_bundles_keep_working() {
    within("nesting cap", || {
        let loader = PythonLoader::new(PythonConfig {
            max_depth: 16,
            ..PythonConfig::default()
        });
        let (rt, logs) = runtime_with(loader.clone(), &[]);
        ping_pong(&loader, &rt);
        assert_eq!(call_i64(&rt, "pa", 0, 15), Ok(15), "16 levels are allowed");
        assert_eq!(
            call_i64(&rt, "pa", 0, 500),
            Err(AbiErrorCode::Generic as u32)
        );
        let logs = logs.lock().unwrap();
        assert!(
            logs.iter().any(|(_, _, m)| m.contains(&format!(
                "peer call failed (code {})",
                AbiErrorCode::ReentrantCall as u32
            ))),
            "the innermost caller saw ReentrantCall"
        );
        drop(logs);
        assert_eq!(call_i64(&rt, "pb", 0, 3), Ok(3));
    });
}

#[test]
fn ping_pong_from_many_host_threads() {
    within("ping-pong threads", || {
        let (rt, loader, _) = empty_runtime();
        ping_pong(&loader, &rt);
        std::thread::scope(|s| {
            for t in 0..4i64 {
                let rt = &rt;
                s.spawn(move || {
                    for i in 0..60i64 {
                        let n = (i * 7 + t) % 10;
                        let root = if (i + t) % 2 == 0 { "pa" } else { "pb" };
                        assert_eq!(call_i64(rt, root, 0, n), Ok(n));
                    }
                });
            }
        });
    });
}
