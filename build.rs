// A symlink to interp-pool/build_python.rs (one gate for both crates), so the packaged
// crate carries its own copy.
mod build_python;

fn main() {
    build_python::configure();
}
