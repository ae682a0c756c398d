//! Running Rust code with Ruby's GVL released, so other Ruby threads run meanwhile.
//!
//! The closure must not touch Ruby (`Send` keeps Ruby values out) and panics are
//! caught here, because unwinding through Ruby's C frames is undefined behaviour.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

struct Call<F, R> {
    f: Option<F>,
    result: Option<std::thread::Result<R>>,
}

unsafe extern "C" fn trampoline<F, R>(data: *mut c_void) -> *mut c_void
where
    F: FnOnce() -> R,
{
    // SAFETY: `data` is the `Call` that `without_gvl` keeps alive for this call.
    let call = unsafe { &mut *(data as *mut Call<F, R>) };
    if let Some(f) = call.f.take() {
        call.result = Some(catch_unwind(AssertUnwindSafe(f)));
    }
    std::ptr::null_mut()
}

/// Runs `f` without the GVL. Returns `Err` with the panic message if `f` panicked.
/// `f` is not interruptible: keep it short or bounded by a timeout.
pub fn without_gvl<F, R>(f: F) -> Result<R, String>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let mut call = Call {
        f: Some(f),
        result: None,
    };
    // SAFETY: the trampoline only touches `call`, which outlives this blocking call.
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(trampoline::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            None,
            std::ptr::null_mut(),
        );
    }
    match call.result {
        Some(Ok(r)) => Ok(r),
        Some(Err(panic)) => Err(panic_message(&panic)),
        None => Err("without_gvl: the closure did not run".into()),
    }
}

pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}
