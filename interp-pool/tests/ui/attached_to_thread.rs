// `&Attached` cannot reach another thread (Attached is !Sync), even a scoped one.
use interp_pool::{InterpreterConfig, InterpreterHandle};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let _ = h.call(|py| {
        std::thread::scope(|s| {
            s.spawn(|| py.run("pass"));
        });
        Ok(())
    });
}
