//! The layout's rules, checked on the source: each layer imports only layers below it, no
//! import cycle among the modules, no file over 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module may import its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("configuration", &["config", "profile", "cron"]),
    ("data access", &["data"]),
    // Error text and exit codes, log output: used by the engines and every surface.
    ("support", &["error", "logging"]),
    // Throwaway clusters and sample data, for tests, benchmarks and the demo.
    ("tools", &["fixture", "pgbouncer", "pgcluster"]),
    ("engines", &["engine"]),
    ("service", &["service"]),
    ("surfaces", &["surface"]),
];

fn rank(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|(_, mods)| mods.contains(&top))
        .unwrap_or_else(|| panic!("src/{top} belongs to no layer of tests/architecture.rs"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file belongs to, at the depth where rooms are named: `data::pg`,
/// `engine::upload`, `service::scheduler`, `config`, ...
fn room(path: &Path, src: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .strip_prefix(src)
        .unwrap()
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let top = parts[0].as_str();
    if matches!(top, "lib" | "main") {
        return None;
    }
    let layered = matches!(top, "data" | "engine" | "service" | "surface");
    Some(match (layered, parts.get(1)) {
        (true, Some(second)) if second != "mod" => format!("{top}::{second}"),
        _ => top.to_string(),
    })
}

/// The rooms a source text imports through `crate::` paths (tests excluded).
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segments = path.split("::").filter(|s| !s.is_empty());
        let Some(top) = segments.next() else { continue };
        let layered = matches!(top, "data" | "engine" | "service" | "surface");
        match (layered, segments.next()) {
            (true, Some(second)) if second.chars().next().is_some_and(|c| c.is_lowercase()) => {
                found.insert(format!("{top}::{second}"))
            }
            _ => found.insert(top.to_string()),
        };
    }
    found
}

#[test]
fn layers_point_down_rooms_form_no_cycle_and_files_stay_small() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        if lines > 600 {
            problems.push(format!("{} has {lines} lines (over 600)", file.display()));
        }
        let Some(room) = room(file, &src) else {
            continue;
        };
        let from_top = room.split("::").next().unwrap().to_string();
        for import in imports(&text) {
            let to_top = import.split("::").next().unwrap();
            if rank(to_top) > rank(&from_top) {
                problems.push(format!(
                    "{} ({}) imports {import} ({}), a layer above it",
                    file.display(),
                    LAYERS[rank(&from_top)].0,
                    LAYERS[rank(to_top)].0
                ));
            }
            if import != room {
                graph.entry(room.clone()).or_default().insert(import);
            }
        }
    }
    // Cycles: a room that reaches itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = graph[start].iter().collect();
        while let Some(next) = stack.pop() {
            if next == start {
                problems.push(format!("{start} is in an import cycle"));
                break;
            }
            if seen.insert(next.clone()) {
                stack.extend(graph.get(next).into_iter().flatten());
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
