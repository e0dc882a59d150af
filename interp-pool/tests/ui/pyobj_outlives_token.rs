// Send aside, a PyObj lives no longer than the borrow of the Attached token it came from.
use interp_pool::{Attached, PyObj};

fn keep<'long>(py: &Attached<'_>) -> PyObj<'long> {
    py.eval("object()").unwrap()
}

fn main() {}
