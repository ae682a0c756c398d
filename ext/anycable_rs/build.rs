// Exposes the Ruby build's cfg flags (ruby_gte_3_1 …) to this crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Rerun for this file (and the env rb-sys-env names) only: by default cargo reruns a
    // build script when any file in the crate's directory changes, and `gem install`
    // builds in this directory (Makefile, the copied library), so `make install` would
    // rebuild the crate `make` had just built.
    println!("cargo:rerun-if-changed=build.rs");
    let _ = rb_sys_env::activate()?;
    Ok(())
}
