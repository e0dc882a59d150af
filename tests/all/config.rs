//! Bad configuration (issue 20, defect 8): every value nothing can run with fails the load
//! with an error naming the bundle, the field and the value, never a panic; and a bundle
//! can opt out of `call_timeout` (`bundle_timeouts[name] = None`).

use std::io::Write as _;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use polyplug::error::LoaderError;
use polyplug_subinterp::{PythonConfig, PythonLoader, TIMEOUT_MESSAGE};
use polyplug_utils::BundleId;

use crate::support::*;

const ECHO: &str = "def echo(impl, args, out, arena, alloc):\n    put_i64(out, i64_at(args))\n";

/// Loads a fresh bundle `name` under `config`; the load's error.
fn load_error(name: &str, config: PythonConfig) -> Option<LoaderError> {
    let loader = PythonLoader::new(config);
    let (rt, _logs) = runtime_with(loader.clone(), &[]);
    let src = plugin_source(&format!("{name}@1"), ECHO, "echo");
    load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).err()
}

#[test]
fn each_unworkable_setting_fails_the_load_naming_the_bundle_and_the_value() {
    within("bad settings", || {
        let d = PythonConfig::default;
        let cases: [(&str, PythonConfig, &str); 9] = [
            (
                "cfg_timeout_max",
                PythonConfig {
                    call_timeout: Some(Duration::MAX),
                    ..d()
                },
                "call_timeout: Some(18446744073709551615.999999999s)",
            ),
            (
                "cfg_timeout_zero",
                PythonConfig {
                    call_timeout: Some(Duration::ZERO),
                    ..d()
                },
                "call_timeout: Some(0ns)",
            ),
            (
                "cfg_bundle_timeout_max",
                PythonConfig {
                    bundle_timeouts: [("cfg_bundle_timeout_max".into(), Some(Duration::MAX))]
                        .into(),
                    ..d()
                },
                "bundle_timeouts[\"cfg_bundle_timeout_max\"]: Some(18446744073709551615.999999999s)",
            ),
            (
                "cfg_grace_max",
                PythonConfig {
                    interrupt_grace: Duration::MAX,
                    ..d()
                },
                "interrupt_grace: 18446744073709551615.999999999s",
            ),
            (
                "cfg_grace_zero",
                PythonConfig {
                    interrupt_grace: Duration::ZERO,
                    ..d()
                },
                "interrupt_grace: 0ns",
            ),
            (
                "cfg_depth_zero",
                PythonConfig {
                    max_depth: 0,
                    ..d()
                },
                "max_depth: 0",
            ),
            (
                "cfg_stack_zero",
                PythonConfig {
                    stack_size: 0,
                    ..d()
                },
                "stack_size: 0",
            ),
            (
                "cfg_stack_small",
                PythonConfig {
                    stack_size: interp_pool::MIN_STACK_SIZE - 1,
                    ..d()
                },
                "stack_size: 1048575",
            ),
            (
                "cfg_main_threads_zero",
                PythonConfig {
                    main_threads: Some(0),
                    ..d()
                },
                "main_threads: Some(0)",
            ),
        ];
        for (name, config, value) in cases {
            match load_error(name, config) {
                Some(LoaderError::InitFailed { bundle, error }) => {
                    assert_eq!(bundle, name);
                    assert!(
                        error.contains(value) && error.contains("invalid PythonConfig::"),
                        "{name}: {error:?} should name {value:?}"
                    );
                }
                other => panic!("{name}: expected a load error naming {value:?}, got {other:?}"),
            }
        }
        // The bounds themselves are accepted.
        let edge = PythonConfig {
            call_timeout: Some(PythonConfig::MAX_TIMEOUT),
            interrupt_grace: PythonConfig::MIN_GRACE,
            max_depth: 1,
            stack_size: interp_pool::MIN_STACK_SIZE,
            ..d()
        };
        assert!(load_error("cfg_edges", edge).is_none());
    });
}

/// `patient` answers once the test writes to the socket it connects to (a socket read is
/// not woken by a deadline: with one, the interrupt would be raised as soon as it returns);
/// `hasty` sleeps until its deadline.
const PATIENT: &str = r#"
import socket, time
def wait(impl, args, out, arena, alloc):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(PATH)
    got = b""
    while (chunk := s.recv(16)):
        got += chunk
    s.close()
    put_i64(out, len(got))
def nap(impl, args, out, arena, alloc):
    time.sleep(3600)
"#;

#[test]
fn a_bundle_with_no_timeout_of_its_own_outlives_call_timeout() {
    within("no deadline for one bundle", || {
        let loader = PythonLoader::new(PythonConfig {
            call_timeout: Some(Duration::from_millis(50)),
            bundle_timeouts: [("patient".to_owned(), None)].into(),
            ..PythonConfig::default()
        });
        let (rt, _logs) = runtime_with(loader.clone(), &[]);
        let path = scratch("patient").join("gate.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let defs = format!("PATH = {:?}\n{PATIENT}", path.to_str().unwrap());
        for name in ["patient", "hasty"] {
            let src = plugin_source(&format!("{name}@1"), &defs, "wait, nap");
            load_dir(&loader, &rt, &write_bundle(name, &src, &[]).1).unwrap();
        }
        let answered = std::thread::scope(|s| {
            let patient = s.spawn(|| call_abi(&rt, "patient", 0, 0));
            // Gate 1: `patient`'s call is running (it connected).
            let (mut conn, _) = listener.accept().unwrap();
            // Gate 2: a call that keeps `call_timeout` started after it and ran out.
            let e = call_abi(&rt, "hasty", 1, 0).unwrap_err();
            // SAFETY: loader messages are static byte strings.
            let msg = unsafe { std::slice::from_raw_parts(e.message.ptr, e.message.len) };
            assert_eq!(msg, TIMEOUT_MESSAGE);
            conn.write_all(b"go").unwrap();
            drop(conn);
            patient.join().unwrap()
        });
        assert_eq!(answered.map_err(|e| e.code), Ok(2));
        let m = loader.metrics(BundleId::new("patient").id()).unwrap();
        assert_eq!((m.timeouts, m.errors), (0, 0), "{m:?}");
        let h = loader.metrics(BundleId::new("hasty").id()).unwrap();
        assert_eq!(h.timeouts, 1, "{h:?}");
    });
}
