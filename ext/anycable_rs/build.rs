// Exposes the Ruby build's cfg flags (ruby_gte_3_1 …) to this crate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rb_sys_env::activate()?;
    Ok(())
}
