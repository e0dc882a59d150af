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

fn text(v: StringView) -> String {
    // SAFETY: a view returned by a caller's arena, valid until its next call.
    String::from_utf8(unsafe { std::slice::from_raw_parts(v.ptr, v.len) }.to_vec()).unwrap()
}

fn find(rt: &polyplug::runtime::Runtime, name: &str) -> polyplug_abi::GuestContractHandle {
    rt.find_guest_contract(polyplug_utils::GuestContractId::new(name, 1).id(), 1)
        .unwrap()
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
