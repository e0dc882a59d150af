//! `PythonConfig::fast_glue`: the generated glue's `ctypes.string_at` / `ctypes.memmove`
//! run as native fast paths in every mode, the fixtures answer the same with it on and off
//! (from 8 threads), a bundle that replaces `ctypes.memmove` keeps its own, and `false`
//! replaces nothing.

use std::sync::Arc;

use polyplug::runtime::Runtime;
use polyplug_abi::StringView;
use polyplug_subinterp::{InterpreterMode, PythonConfig, PythonLoader};

use crate::core_api::host::host_callers::{CalculatorContract, CounterContract, PipelineContract};
use crate::support::*;

fn loader(fast_glue: bool) -> PythonLoader {
    PythonLoader::new(PythonConfig {
        fast_glue,
        ..PythonConfig::default()
    })
}

fn fast_glue_of(loader: &PythonLoader, bundle: &str) -> bool {
    loader
        .bundle_info(polyplug_utils::BundleId::new(bundle).id())
        .expect("loaded")
        .fast_glue
}

/// A bundle whose fn 0 reports which of `ctypes.string_at` (bit 0) and `ctypes.memmove`
/// (bit 1) are native builtins in its interpreter, writing the answer with memmove.
const PROBE: &str = r#"
def probe(impl, args, out, arena, alloc):
    native = lambda f: type(f).__name__ == "builtin_function_or_method"
    bits = int(native(ctypes.string_at)) | int(native(ctypes.memmove)) << 1
    ctypes.memmove(out, bits.to_bytes(8, "little"), 8)
"#;

fn probe_bits(rt: &Runtime, contract: &str) -> i64 {
    call_i64(rt, contract, 0, 0).expect("probe call")
}

/// Every fixture function with varied inputs; the answers as text, in call order.
fn fixture_answers(rt: &Runtime, thread: i64) -> Vec<String> {
    let host = host(rt);
    let mut calc = CalculatorContract::new(find(rt, "calculator"), host).unwrap();
    let mut counter = CounterContract::new(find(rt, "counter"), host).unwrap();
    let mut pipe = PipelineContract::new(find(rt, "pipeline"), host).unwrap();
    let names = [
        String::new(),
        "polyplug".to_owned(),
        "ünïcødé ✓".to_owned(),
        "x".repeat(4000),
    ];
    let mut out = Vec::new();
    for i in 0..150 {
        let (a, b) = (i * 7919 - 500_000 + thread, thread - i * 31);
        out.push(format!("{:?}", calc.add(a, b)));
        out.push(format!("{:?}", calc.sub(a, b)));
        out.push(format!("{:?}", calc.mul(a, b)));
        out.push(format!(
            "{:?}",
            calc.add(i64::MAX, i + 1).map_err(|e| e.code)
        ));
        let name = &names[(i as usize) % names.len()];
        let v = StringView {
            ptr: name.as_ptr(),
            len: name.len(),
        };
        out.push(calc.greet(v).map(text).unwrap_or_else(|e| format!("{e:?}")));
        out.push(format!("{:?}", counter.increment(i)));
        if i % 10 == 0 {
            out.push(format!("{:?}", counter.get()));
            out.push(format!("{:?}", pipe.run(a, b)));
            out.push(
                pipe.describe(v)
                    .map(text)
                    .unwrap_or_else(|e| format!("{e:?}")),
            );
        }
    }
    out
}

fn answers_from_8_threads(fast_glue: bool) -> Vec<Vec<String>> {
    let loader = loader(fast_glue);
    let (rt, _logs) = runtime_with(loader.clone(), &[fixtures()]);
    for b in ["py_calculator", "py_counter", "py_cruncher", "py_pipeline"] {
        assert_eq!(fast_glue_of(&loader, b), fast_glue, "{b}");
    }
    let rt: Arc<Runtime> = rt;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let rt = &rt;
                s.spawn(move || fixture_answers(rt, t))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[test]
fn fixtures_answer_the_same_with_fast_glue_on_and_off_from_8_threads() {
    within("fast glue on/off, 8 threads", || {
        let on = answers_from_8_threads(true);
        let off = answers_from_8_threads(false);
        assert_eq!(on.len(), 8);
        for (t, (a, b)) in on.iter().zip(&off).enumerate() {
            assert_eq!(a.len(), b.len());
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_eq!(x, y, "thread {t}, answer {i}");
            }
        }
        // Spot checks against what the fixtures compute.
        assert_eq!(on[0][0], format!("{:?}", Ok::<i64, ()>(-500_000)));
        assert!(
            on[0].iter().any(|a| a == "Hello, ünïcødé ✓!"),
            "{:?}",
            &on[0][..8]
        );
    });
}

#[test]
fn fast_glue_is_installed_in_every_mode_and_not_at_all_when_off() {
    let mut modes = vec![InterpreterMode::SharedGil, InterpreterMode::Main];
    if own_gil_runs_ctypes() {
        modes.push(InterpreterMode::OwnGil);
    } else {
        note(
            "fast_glue::fast_glue_is_installed_in_every_mode_and_not_at_all_when_off",
            "own_gil skipped: 3.12's _ctypes refuses own-GIL interpreters",
        );
    }
    for mode in modes {
        for on in [true, false] {
            if mode == InterpreterMode::Main && !on {
                // The main interpreter's ctypes is shared by every main bundle of the
                // process: once an earlier test installed the fast paths there, they stay.
                continue;
            }
            let name = format!("probe_{}_{}", mode.as_str(), on);
            let contract = format!("{name}@1");
            let loader = PythonLoader::new(PythonConfig {
                fast_glue: on,
                bundle_modes: [(name.clone(), mode)].into(),
                ..PythonConfig::default()
            });
            let (rt, _logs) = runtime_with(loader.clone(), &[]);
            let src = plugin_source(&contract, PROBE, "probe");
            load_dir(&loader, &rt, &write_bundle(&name, &src, &[]).1).unwrap();
            assert_eq!(mode_of(&loader, &name), mode.as_str());
            assert_eq!(fast_glue_of(&loader, &name), on, "{name}");
            assert_eq!(probe_bits(&rt, &name), if on { 3 } else { 0 }, "{name}");
        }
    }
}

#[test]
fn a_bundle_that_replaces_ctypes_memmove_keeps_its_own() {
    let defs = r#"
_original_memmove = ctypes.memmove
calls = [0]
def my_memmove(dst, src, n):
    calls[0] += 1
    return _original_memmove(dst, src, n)
ctypes.memmove = my_memmove

def write(impl, args, out, arena, alloc):
    # Counts this call's own memmove too; fails loudly if the fast path came back.
    assert ctypes.memmove is my_memmove
    ctypes.memmove(out, (calls[0] + 1).to_bytes(8, "little"), 8)
"#;
    let (rt, loader, _logs) = empty_runtime();
    let src = plugin_source("patcher@1", defs, "write");
    load_dir(&loader, &rt, &write_bundle("patcher", &src, &[]).1).unwrap();
    // Installed before the entry module ran; the module's assignment wins afterwards.
    assert!(fast_glue_of(&loader, "patcher"));
    assert_eq!(call_i64(&rt, "patcher", 0, 0), Ok(1));
    assert_eq!(call_i64(&rt, "patcher", 0, 0), Ok(2));
}
