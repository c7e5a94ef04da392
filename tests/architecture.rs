//! The folder layout is the architecture: data flows one way through the stages, and a module
//! may only use modules that come before it in that flow. This test reads `src/` and fails on
//! any reference that points the other way (an import loop, or a stage reaching into a later
//! one), so the diagram in `docs/architecture.md` stays true.

use std::collections::BTreeSet;
use std::path::Path;

/// The library's top-level modules in the order data flows through them. `synth` and `demo`
/// are tools built on the stages; `cli/` and `main.rs` (the binary) may use everything.
const ORDER: &[&str] = &[
    "util",
    "formats",
    "corpus",
    "profile",
    "allocate",
    "checkpoint",
    "pack",
    "serve",
    "model",
    "infer",
    "verify",
    "hub",
    "synth",
    "demo",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn stages_only_use_earlier_stages() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = BTreeSet::new();
    let mut seen_modules = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "main" || module == "lib" || module == "cli" {
            continue;
        }
        seen_modules.insert(module.clone());
        let rank = ORDER
            .iter()
            .position(|m| *m == module)
            .unwrap_or_else(|| panic!("{}: module {module} is not in ORDER", rel.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == module {
                continue;
            }
            if let Some(r) = ORDER.iter().position(|m| *m == name) {
                if r > rank {
                    violations.insert(format!("{} uses crate::{name}", rel.display()));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "modules using later stages:\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
    for m in ORDER {
        assert!(
            seen_modules.contains(*m),
            "ORDER names {m}, which src/ lacks"
        );
    }
}
