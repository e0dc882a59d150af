//! The polyplugc-generated fixture bundles through the polyplugc-generated Rust host
//! callers, exactly as a polyplug host uses them.

use polyplug_abi::{AbiErrorCode, StringView};

use crate::core_api::host::host_callers::{CalculatorContract, CounterContract, PipelineContract};
use crate::support::*;

fn view(s: &str) -> StringView {
    StringView {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

#[test]
fn calculator_counter_pipeline_from_the_main_thread() {
    within("fixtures main thread", || {
        let (rt, _logs) = fixture_runtime();
        let host = host(&rt);
        let mut calc = CalculatorContract::new(find(&rt, "calculator"), host).unwrap();
        assert_eq!(calc.add(2, 3).unwrap(), 5);
        assert_eq!(calc.sub(2, 3).unwrap(), -1);
        assert_eq!(calc.mul(6, 7).unwrap(), 42);
        let g = calc.greet(view("polyplug")).unwrap();
        assert_eq!(text(g), "Hello, polyplug!");
        let err = calc.add(i64::MAX, 1).unwrap_err();
        assert_eq!(err.code, AbiErrorCode::Generic);

        let mut c1 = CounterContract::new(find(&rt, "counter"), host).unwrap();
        let mut c2 = CounterContract::new(find(&rt, "counter"), host).unwrap();
        assert_eq!(c1.increment(5).unwrap(), 5);
        assert_eq!(c1.increment(2).unwrap(), 7);
        assert_eq!(c2.increment(1).unwrap(), 1);
        assert_eq!(c1.get().unwrap(), 7);
        c1.clear().unwrap();
        assert_eq!(c1.get().unwrap(), 0);
        assert_eq!(c2.get().unwrap(), 1);

        let mut p = PipelineContract::new(find(&rt, "pipeline"), host).unwrap();
        assert_eq!(p.run(2, 3).unwrap(), 10);
        assert_eq!(
            text(p.describe(view("peer")).unwrap()),
            "pipeline: Hello, peer!"
        );
        // scaled() needs host.env@1, which this runtime does not provide.
        assert_eq!(p.scaled(7).unwrap_err().code, AbiErrorCode::Generic);
    });
}

struct Env(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl crate::core_api::host::host_contracts::HostEnv for Env {
    fn scale(&self) -> i64 {
        10
    }
    fn log(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_owned());
    }
}

#[test]
fn pipeline_calls_the_host_contract() {
    let (rt, _logs) = fixture_runtime();
    let seen = std::sync::Arc::default();
    let iface = crate::core_api::host::interface_factories::create_host_env_interface(Box::new(
        Env(std::sync::Arc::clone(&seen)),
    ));
    rt.register_host_contract(
        crate::core_api::host::host_contracts::HOSTENV_CONTRACT_ID,
        iface,
    )
    .unwrap();
    let mut p = PipelineContract::new(find(&rt, "pipeline"), host(&rt)).unwrap();
    assert_eq!(p.scaled(7).unwrap(), 70);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        ["py_pipeline: scaled(7) with factor 10"]
    );
}

#[test]
fn eight_host_threads_at_once_every_result_checked() {
    let (rt, _logs) = fixture_runtime();
    let host = host(&rt) as usize;
    let handles = [
        find(&rt, "calculator"),
        find(&rt, "counter"),
        find(&rt, "pipeline"),
    ];
    within("8 threads on fixtures", || {
        std::thread::scope(|s| {
            for t in 0..8i64 {
                s.spawn(move || {
                    let host = host as *const polyplug_abi::HostApi;
                    let mut calc = CalculatorContract::new(handles[0], host).unwrap();
                    let mut counter = CounterContract::new(handles[1], host).unwrap();
                    let mut pipe = PipelineContract::new(handles[2], host).unwrap();
                    for i in 0..200i64 {
                        assert_eq!(calc.add(t, i).unwrap(), t + i);
                        assert_eq!(calc.mul(t, i).unwrap(), t * i);
                        assert_eq!(counter.increment(t + 1).unwrap(), (i + 1) * (t + 1));
                        if i % 10 == 0 {
                            assert_eq!(pipe.run(t, i).unwrap(), (t + i) * 2);
                            let who = format!("t{t}-{i}");
                            assert_eq!(
                                text(calc.greet(view(&who)).unwrap()),
                                format!("Hello, {who}!")
                            );
                        }
                    }
                    assert_eq!(counter.get().unwrap(), 200 * (t + 1));
                });
            }
        });
    });
}
