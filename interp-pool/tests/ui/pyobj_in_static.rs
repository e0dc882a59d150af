// A PyObj cannot be kept in a static (shared by every thread, so it would need Send).
use std::sync::Mutex;

use interp_pool::PyObj;

static KEPT: Mutex<Option<PyObj<'static>>> = Mutex::new(None);

fn main() {
    drop(KEPT.lock());
}
