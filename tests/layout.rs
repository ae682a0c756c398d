//! The core's layout, checked: its folders depend on each other one way only (the order
//! below, bottom up, as README's "Layout" lists them), and no file grows into two.
//! A `use crate::…` that points up this list is an import circle in the making.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom up: each module may use only those before it.
const ORDER: &[&str] = &[
    "logging",
    "metrics",
    "protocol",
    "http",
    "auth",
    "pubsub",
    "broker",
    "session",
    "hub",
    "config",
    "controller",
    "server",
];

/// A file past this is probably two things (STYLE.md says ~500; tests beside the code
/// count too).
const MAX_LINES: usize = 650;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests and comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names as `crate::<module>`.
fn uses(code: &str) -> BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn modules_depend_one_way_and_files_stay_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            wrong.push(format!(
                "{} has {lines} lines (over {MAX_LINES})",
                rel.display()
            ));
        }
        if rel == Path::new("lib.rs") {
            continue;
        }
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(rank) = ORDER.iter().position(|m| *m == module) else {
            wrong.push(format!("{module} is not in tests/layout.rs's ORDER"));
            continue;
        };
        for used in uses(&code(&text)) {
            if used == module {
                continue;
            }
            match ORDER.iter().position(|m| *m == used) {
                Some(r) if r < rank => {}
                Some(_) => wrong.push(format!(
                    "{} ({module}) uses crate::{used}, which comes after it",
                    rel.display()
                )),
                None => wrong.push(format!("{} uses crate::{used}, unknown", rel.display())),
            }
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_use() {
    let text = "use crate::protocol;\n// crate::server in a comment\nfn f() { crate::hub::x(); }\n#[cfg(test)]\nuse crate::server;";
    assert_eq!(
        uses(&code(text)),
        BTreeSet::from(["hub".to_string(), "protocol".to_string()])
    );
}
