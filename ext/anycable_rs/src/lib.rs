//! The Ruby extension of anycable-rs: the only crate that touches Ruby.
//!
//! - [`native`]: `AnyCableRs::Native`, the embedded server driven from Ruby;
//! - [`bridge`]: the queue through which tokio tasks get Ruby code run;
//! - [`job`]: a bridge job as a Ruby object, with its reply;
//! - [`session`]: `AnyCableRs::Native::Session`, a client connection as Ruby holds it;
//! - [`nogvl`]: releasing the GVL around blocking waits;
//! - [`settings`]: `Native.new`'s options, read and checked.

mod bridge;
mod job;
mod logger;
mod native;
mod nogvl;
mod session;
mod settings;

use magnus::{Error, Ruby};

#[magnus::init(name = "anycable_rs")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let module = ruby.define_module("AnyCableRs")?;
    native::init(ruby, module)
}
