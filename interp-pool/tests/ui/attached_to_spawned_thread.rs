// `std::thread::spawn` refuses `&Attached` too (not 'static, not Send).
use interp_pool::{InterpreterConfig, InterpreterHandle};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let _ = h.call(|py| {
        let _ = std::thread::spawn(move || py.run("pass")).join();
        Ok(())
    });
}
