#[path = "build_python.rs"]
mod build_python;

fn main() {
    build_python::configure();
}
