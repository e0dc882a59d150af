// `call` cannot return a PyObj out of the job (refused by its `R: Send` bound; the borrow
// of the job's token alone refuses it too: pyobj_outlives_token.rs).
use interp_pool::{InterpreterConfig, InterpreterHandle};

fn main() {
    let h = InterpreterHandle::spawn(InterpreterConfig::named("ui")).unwrap();
    let _escaped = h.call(|py| py.eval("object()"));
}
