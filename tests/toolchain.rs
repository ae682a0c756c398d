//! The lock file builds with the Rust `Cargo.toml` promises (`rust-version`, 1.85:
//! Debian 13's rustc, which the second CI stack builds the gem with). Issue #21: the
//! lock had taken crates that need 1.86–1.88, so the documented minimum could not build
//! the gem. `.cargo/config.toml` keeps `cargo update` within it; this says when a lock
//! file does not.

use std::process::Command;

/// (major, minor, patch) of "1.85" or "1.88.0".
fn version(text: &str) -> [u64; 3] {
    let mut parts = text.split('.').map(|n| n.parse().unwrap_or(0));
    [0; 3].map(|_| parts.next().unwrap_or(0))
}

#[test]
fn every_crate_built_for_this_machine_accepts_the_stated_rust_version() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("Cargo.toml");
    let stated = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("a workspace rust-version");
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc's host triple");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            &host,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let resolved: Vec<&str> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let too_new: Vec<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| resolved.contains(&p["id"].as_str().unwrap_or("")))
        .filter_map(|p| {
            let needs = p["rust_version"].as_str()?;
            (version(needs) > version(stated)).then(|| {
                format!(
                    "{} {} needs {needs}",
                    p["name"].as_str().unwrap(),
                    p["version"]
                )
            })
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "Cargo.lock holds crates newer than rust-version {stated} allows \
         (CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo update picks older ones):\n{}",
        too_new.join("\n")
    );
}
