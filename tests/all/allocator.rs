//! The MEM/OBJ allocator the loader chose (mimalloc by default, with accounting) under
//! real extension modules from PyPI, loaded, called and unloaded in cycles: an extension
//! that mixed allocator domains would crash here.

use std::path::PathBuf;

use polyplug_subinterp::{AllocatorInUse, InterpreterMode, PythonConfig, PythonLoader};
use polyplug_utils::BundleId;

use crate::core_api::host::host_callers::CalculatorContract;
use crate::ext_api::host::host_callers::{
    ImagingContract, JsonifyContract, PackerContract, StatsContract, YamlconvContract,
};
use crate::support::*;

const EXT: [&str; 5] = [
    "py_numpy",
    "py_orjson",
    "py_yaml",
    "py_msgpack",
    "py_pillow",
];

/// Every ext bundle pinned to the mode it lands in by itself on 3.13 (pinned bundles
/// leave the process-wide remembered outcomes alone, which other tests check).
fn loader() -> PythonLoader {
    let modes = EXT.iter().map(|b| {
        let mode = match *b {
            "py_pillow" => InterpreterMode::SharedGil,
            _ => InterpreterMode::Main,
        };
        ((*b).to_owned(), mode)
    });
    PythonLoader::new(PythonConfig {
        bundle_modes: modes.collect(),
        ..PythonConfig::default()
    })
}

#[test]
fn ext_bundles_answer_through_load_unload_cycles_on_the_chosen_allocator() {
    within_for(
        std::time::Duration::from_secs(300),
        "ext bundles in load/unload cycles",
        || {
            let loader = loader();
            let dir: PathBuf = ext_fixtures_only(&EXT);
            let (rt, _logs) = runtime_with(loader.clone(), &[dir.clone(), fixtures()]);
            let calc_id = BundleId::new("py_calculator").id();
            let info = loader.bundle_info(calc_id).unwrap();
            // This binary's loader initialised Python, with no PYTHONMALLOC.
            if std::env::var_os("PYTHONMALLOC").is_none() {
                assert_eq!(info.allocator, AllocatorInUse::Mimalloc, "{info:?}");
                assert!(info.memory_accounting, "{info:?}");
            }
            for cycle in 0..4i64 {
                let host = host(&rt);
                let mut stats = StatsContract::new(find(&rt, "stats"), host).unwrap();
                let mut json = JsonifyContract::new(find(&rt, "jsonify"), host).unwrap();
                let mut yaml = YamlconvContract::new(find(&rt, "yamlconv"), host).unwrap();
                let mut pack = PackerContract::new(find(&rt, "packer"), host).unwrap();
                let mut img = ImagingContract::new(find(&rt, "imaging"), host).unwrap();
                let mut calc = CalculatorContract::new(find(&rt, "calculator"), host).unwrap();
                for n in 1..20 + cycle {
                    assert_eq!(
                        stats.sum_squares(n).unwrap(),
                        (0..n).map(|k| k * k).sum::<i64>()
                    );
                    assert!(text(json.encode(n % 5).unwrap()).starts_with("{\"n\":"));
                    assert!(!text(yaml.roundtrip(n % 7).unwrap()).is_empty());
                    assert!(pack.packed_len(n * 9).unwrap() > 0);
                    img.checksum(n).unwrap();
                    assert_eq!(calc.add(n, cycle).unwrap(), n + cycle);
                }
                drop((stats, json, yaml, pack, img));
                for b in EXT {
                    rt.unload_bundle(BundleId::new(b)).unwrap();
                }
                for b in EXT {
                    rt.load_bundle(&dir.join(b)).unwrap();
                }
            }
            // Memory is still counted (and freed) for the bundle that stayed loaded.
            let m = loader.metrics(calc_id).unwrap();
            assert!(m.memory_bytes > 0, "{m:?}");
        },
    );
}
