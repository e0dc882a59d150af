use crate::util::*;

#[test]
fn globals_modules_and_sys_path_do_not_leak_between_interpreters() {
    let a = spawn("iso-a");
    let b = spawn("iso-b");
    run(&a, "import sys, types\nsecret = 'a'\nsys.path.insert(0, '/only/in/a')\nsys.modules['shared_name'] = types.ModuleType('shared_name')\nsys.modules['shared_name'].who = 'a'");
    run(&b, "import sys, types\nsys.modules['shared_name'] = types.ModuleType('shared_name')\nsys.modules['shared_name'].who = 'b'");
    assert_eq!(eval_str(&a, "secret"), "a");
    let err = b.call(|py| py.eval("secret").map(drop)).unwrap_err();
    assert_eq!(err.python_exception().unwrap().type_name, "NameError");
    assert_eq!(eval_i64(&a, "int('/only/in/a' in sys.path)"), 1);
    assert_eq!(eval_i64(&b, "int('/only/in/a' in sys.path)"), 0);
    assert_eq!(eval_str(&a, "sys.modules['shared_name'].who"), "a");
    assert_eq!(eval_str(&b, "sys.modules['shared_name'].who"), "b");
    // Distinct CPython interpreters, distinct pool ids.
    assert_ne!(a.python_id(), b.python_id());
    assert_ne!(a.id(), b.id());
    a.end();
    b.end();
}
