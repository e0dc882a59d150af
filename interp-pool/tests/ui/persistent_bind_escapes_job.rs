// The Persistent crosses jobs (it is Send + Sync), but the PyObj that `bind` gives back
// cannot be returned from the job (see also persistent_bind_outlives_token.rs).
use interp_pool::{InterpreterConfig, InterpreterHandle, Persistent};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let kept: Persistent = h
        .call(|py| Ok(Persistent::new(py, py.eval("object()")?)))
        .unwrap();
    let _escaped = h.call(|py| kept.bind(py));
}
