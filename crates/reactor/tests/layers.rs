//! The core's layering, checked on its source: a file may use only modules of the
//! layers below its own (`docs/architecture.md` draws the same picture). Names
//! re-exported at the crate root count as the module that defines them.

use std::collections::HashMap;

/// Bottom first; a module may import only modules of lower layers.
const LAYERS: &[&[&str]] = &[
    &[
        "event",
        "framing",
        "buf",
        "log_limit",
        "clock",
        "client_key",
        "filter",
    ],
    &["timer", "pool", "stats"],
    &["reactor"],
    &["handler"],
    &["conn", "listener", "udp"],
    &["framed", "pipe"],
    &["echo", "stats_log"],
];

fn src(name: &str) -> String {
    let path = format!("{}/src/{name}.rs", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `name -> module` for the crate root's `pub use module::{names}` lines.
fn root_names() -> HashMap<String, String> {
    let lib = src("lib");
    let mut map = HashMap::new();
    let mut rest = lib.as_str();
    while let Some(i) = rest.find("pub use ") {
        rest = &rest[i + 8..];
        let end = rest.find(';').unwrap();
        let item = &rest[..end];
        if let Some((module, names)) = item.split_once("::") {
            let names = names.trim_matches(|c| c == '{' || c == '}');
            for n in names.split(',') {
                let n = n.trim().rsplit("::").next().unwrap().trim();
                if !n.is_empty() {
                    map.insert(n.to_string(), module.trim().to_string());
                }
            }
        }
        rest = &rest[end..];
    }
    map
}

/// The crate modules a file's code (not its comments) refers to through `crate::`.
fn imports(text: &str, roots: &HashMap<String, String>) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + 7..];
        let group = rest.starts_with('{');
        let body = if group {
            &rest[1..rest.find('}').unwrap()]
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        };
        for name in body.split(',') {
            let name = name.trim().split("::").next().unwrap().trim();
            let module = roots.get(name).cloned().unwrap_or_else(|| name.to_string());
            if !module.is_empty() {
                found.push(module);
            }
        }
    }
    found
}

#[test]
fn no_core_file_imports_its_own_layer_or_above() {
    let roots = root_names();
    let layer_of: HashMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (*m, i)))
        .collect();
    // Every module of the crate is in the picture.
    for entry in std::fs::read_dir(format!("{}/src", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let module = name.trim_end_matches(".rs");
        assert!(
            module == "lib" || layer_of.contains_key(module),
            "{module} is in no layer"
        );
    }
    let mut wrong = Vec::new();
    for (module, &layer) in &layer_of {
        for used in imports(&src(module), &roots) {
            match layer_of.get(used.as_str()) {
                Some(&l) if l < layer => {}
                Some(&l) => wrong.push(format!("{module} (layer {layer}) uses {used} (layer {l})")),
                None => wrong.push(format!("{module} uses {used}, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_imports_through_root_names_and_groups() {
    let roots = root_names();
    let used = imports(
        "use crate::{Conn, Loop};\nuse crate::timer::TimerId;\n// crate::echo in a comment\n",
        &roots,
    );
    assert_eq!(used, ["conn", "reactor", "timer"]);
}
