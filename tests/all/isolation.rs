//! One interpreter per bundle: identical module names, globals and sys.path entries in
//! two bundles do not see each other.

use crate::support::*;

#[test]
fn identical_module_names_globals_and_sys_path_stay_per_bundle() {
    let (rt, loader, _) = empty_runtime();
    let defs = |tag: &str| {
        format!(
            r#"import sys, common
GLOBAL_TAG = "{tag}"
common.TOUCHED.append("{tag}")
def probe(impl, args, out, arena, alloc):
    mine = sum(1 for p in sys.path if p.endswith("/iso_{tag}"))
    other = sum(1 for p in sys.path if "/iso_" in p and not p.endswith("/iso_{tag}"))
    put_i64(out, common.VALUE * 100 + len(common.TOUCHED) * 10 + mine - other * 1000)
"#
        )
    };
    for (tag, value) in [("a", 1), ("b", 2)] {
        let name = format!("iso_{tag}");
        let src = plugin_source(&format!("iso{tag}@1"), &defs(tag), "probe");
        let common = format!("VALUE = {value}\nTOUCHED = []\n");
        load_dir(
            &loader,
            &rt,
            &write_bundle(&name, &src, &[("common.py", &common)]).1,
        )
        .unwrap();
    }
    // Each sees its own `common` (VALUE), touched once, and only its own sys.path entry.
    assert_eq!(call_i64(&rt, "isoa", 0, 0), Ok(111));
    assert_eq!(call_i64(&rt, "isob", 0, 0), Ok(211));
}
