// A PyObj cannot be moved to another thread (PyObj is !Send), even a scoped one.
use interp_pool::{InterpreterConfig, InterpreterHandle};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let _ = h.call(|py| {
        let obj = py.eval("object()")?;
        std::thread::scope(|s| {
            s.spawn(move || drop(obj));
        });
        Ok(())
    });
}
