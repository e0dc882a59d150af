// Wrapping a PyObj in Arc<Mutex<..>> does not let it reach another thread.
use std::sync::{Arc, Mutex};

use interp_pool::{InterpreterConfig, InterpreterHandle};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let _ = h.call(|py| {
        let shared = Arc::new(Mutex::new(py.eval("object()")?));
        std::thread::scope(|s| {
            let other = Arc::clone(&shared);
            s.spawn(move || drop(other));
        });
        Ok(())
    });
}
