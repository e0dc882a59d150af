// Send aside, the PyObj from `Persistent::bind` lives no longer than the token's borrow.
use interp_pool::{Attached, Persistent, PyObj};

fn keep<'long>(kept: &Persistent, py: &Attached<'_>) -> PyObj<'long> {
    kept.bind(py).unwrap()
}

fn main() {}
