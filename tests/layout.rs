//! The house rules of the source tree, checked by reading it: folders follow the path of an
//! event and import only downwards, no two files import each other, no file carries more than
//! about 700 lines of code, and the simulator shares no code with the router.
//!
//! `use` trees and `crate::`/`super::` paths outside a file's trailing test module are read as
//! text; a path is resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The router's top-level modules, in the order imports may point: each may use those after it.
const LAYERS: [&str; 12] = [
    // The fuzz targets' entry points reach into every parser.
    "fuzzing", // The shards, started as the store says.
    "router", "control",
    // Several routers through Redis: leases grant the router's shards; the control API shows
    // and forwards by owner.
    "cluster",
    // The REST proxy: the control API authenticates its callers and hands requests down.
    "rest",
    // The one interface for what outlives a request (the cluster implements it too), and the
    // local implementation: it gives delivery, the gateway and state's parts as values.
    "store", "delivery", "gateway", "state", "config", "secret", "tls",
];

/// Lines of code (before a trailing `#[cfg(test)] mod tests`) a source file may have.
const MAX_CODE_LINES: usize = 700;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, by path relative to it.
fn sources(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The module path of a file: `delivery/http/mod.rs` is `delivery::http`.
fn module_of(rel: &str) -> String {
    let path = rel.trim_end_matches(".rs");
    let path = path.strip_suffix("/mod").unwrap_or(path);
    path.replace('/', "::")
}

/// The file without its trailing test module.
fn code_of(text: &str) -> &str {
    match text.rfind("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find("::{") else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = tree[open + 3..]
        .strip_suffix('}')
        .unwrap_or(&tree[open + 3..]);
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p))
        .map(|p| match p.as_str() {
            "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// The paths a file's code names: its `use` trees, and `crate::`/`super::` paths in its body.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim_start();
        let statement = statement.strip_prefix("pub ").unwrap_or(statement);
        let statement = statement
            .strip_prefix("pub(crate) ")
            .or_else(|| statement.strip_prefix("pub(super) "))
            .unwrap_or(statement);
        if let Some(tree) = statement.strip_prefix("use ") {
            let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
            let tree = tree.replace(" as ", " as_").replace(' ', "");
            paths.extend(
                expand(&tree)
                    .into_iter()
                    .map(|p| p.split("as_").next().unwrap().to_owned()),
            );
        }
    }
    for prefix in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(prefix).map(|at| from + at) {
            let tail = &code[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            // The start of a path, not `super::` inside `super::super::`.
            if !code[..at].ends_with("::") {
                paths.push(tail[..end].trim_end_matches(':').to_owned());
            }
            from = at + end.max(prefix.len());
        }
    }
    paths
}

/// Which of this crate's modules each file imports, by module path.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = files.keys().map(|f| module_of(f)).collect();
    let resolve = |path: &str| {
        let mut parts: Vec<&str> = path.split("::").collect();
        while !parts.is_empty() && !modules.contains(&parts.join("::")) {
            parts.pop();
        }
        parts.join("::")
    };
    let mut out = BTreeMap::new();
    for (rel, text) in files {
        let me = module_of(rel);
        let parent = me.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
        let mut found = BTreeSet::new();
        for path in paths_in(code_of(text)) {
            let target = if let Some(rest) = path.strip_prefix("crate::") {
                rest.to_owned()
            } else if path.starts_with("super::") {
                let mut base = parent.clone();
                let mut rest = path.as_str();
                while let Some(more) = rest.strip_prefix("super::") {
                    if rest != path {
                        base = base.rsplit_once("::").map_or("", |(p, _)| p).to_owned();
                    }
                    rest = more;
                }
                match base.as_str() {
                    "" => rest.to_owned(),
                    b => format!("{b}::{rest}"),
                }
            } else {
                continue;
            };
            let module = resolve(&target);
            if !module.is_empty() && module != me {
                found.insert(module);
            }
        }
        out.insert(me, found);
    }
    out
}

/// Pairs of files that import each other (a folder's `mod.rs` and its own files excepted).
fn cycles(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (a, targets) in imports {
        for b in targets {
            let nested = b.starts_with(&format!("{a}::")) || a.starts_with(&format!("{b}::"));
            if a < b && !nested && imports.get(b).is_some_and(|t| t.contains(a)) {
                found.push(format!("{a} and {b} import each other"));
            }
        }
    }
    found
}

#[test]
fn the_routers_folders_import_only_downwards() {
    let files = sources(&repo().join("router/src"));
    let mut upward = Vec::new();
    for (module, targets) in imports(&files) {
        let layer = |m: &str| LAYERS.iter().position(|l| m.split("::").next() == Some(*l));
        let Some(mine) = layer(&module) else {
            continue;
        };
        for target in targets {
            if layer(&target).is_some_and(|theirs| theirs < mine) {
                upward.push(format!("{module} imports {target}, which is above it"));
            }
        }
    }
    assert!(upward.is_empty(), "{upward:#?}");
}

#[test]
fn no_two_files_import_each_other() {
    for dir in ["router/src", "simulator/src"] {
        let found = cycles(&imports(&sources(&repo().join(dir))));
        assert!(found.is_empty(), "{dir}: {found:#?}");
    }
}

#[test]
fn no_source_file_carries_more_than_700_lines_of_code() {
    for dir in ["router/src", "simulator/src"] {
        for (rel, text) in sources(&repo().join(dir)) {
            let lines = code_of(&text).lines().count();
            // A folder's tests in a file of their own are tests, not code.
            let tests_only = rel.ends_with("tests.rs");
            assert!(
                tests_only || lines <= MAX_CODE_LINES,
                "{dir}/{rel} has {lines} lines of code"
            );
        }
    }
}

#[test]
fn the_simulator_shares_no_code_with_the_router() {
    let manifest = std::fs::read_to_string(repo().join("simulator/Cargo.toml")).unwrap();
    let depends = manifest.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("shardhook ")
            || line.starts_with("shardhook=")
            || line.contains("../router")
    });
    assert!(
        !depends,
        "the simulator crate depends on the router:\n{manifest}"
    );
    for (rel, text) in sources(&repo().join("simulator/src")) {
        assert!(
            !text.contains("shardhook::"),
            "simulator/src/{rel} uses the router's code"
        );
    }
    // The router's library uses the simulator only in its tests.
    for (rel, text) in sources(&repo().join("router/src")) {
        if matches!(rel.as_str(), "main.rs" | "demo.rs") {
            continue;
        }
        assert!(
            !code_of(&text).contains("shardhook_simulator"),
            "router/src/{rel} uses the simulator outside its tests"
        );
    }
}

#[test]
fn the_checks_above_see_imports_and_cycles() {
    // The reader itself: grouped, nested and aliased `use` trees, and a cycle it must find.
    assert_eq!(
        expand("crate::a::{b, c::{d, self}}"),
        ["crate::a::b", "crate::a::c::d", "crate::a::c"]
    );
    let files = BTreeMap::from([
        ("a.rs".to_owned(), "use crate::b::{X as Y};\n".to_owned()),
        ("b.rs".to_owned(), "fn f() { crate::a::g() }\n".to_owned()),
        ("c/mod.rs".to_owned(), "mod d;\n".to_owned()),
        ("c/d.rs".to_owned(), "use super::super::a;\n".to_owned()),
    ]);
    let found = imports(&files);
    assert_eq!(found["a"], BTreeSet::from(["b".to_owned()]));
    assert_eq!(cycles(&found), ["a and b import each other"]);
}

/// The library an embedding program builds carries neither the Discord double nor the fuzz
/// targets' entry points: the simulator is a dependency of the binary's feature (`cli`), the
/// fuzzing module behind a feature of its own, off by default. (`scripts/test` also builds
/// the library with no features, so a use of either outside them fails the run.)
#[test]
fn the_library_alone_carries_no_simulator_and_no_fuzzing_entry_points() {
    let manifest: toml::Table = std::fs::read_to_string(repo().join("router/Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let simulator = &manifest["dependencies"]["shardhook-simulator"];
    assert_eq!(
        simulator.get("optional").and_then(|o| o.as_bool()),
        Some(true)
    );
    let features = manifest["features"].as_table().unwrap();
    let enabling: Vec<&str> = features
        .iter()
        .filter(|(_, list)| {
            list.as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str() == Some("dep:shardhook-simulator"))
        })
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(enabling, ["cli"]);
    let default: Vec<&str> = features["default"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(!default.contains(&"fuzzing"), "{default:?}");
    let lib = std::fs::read_to_string(repo().join("router/src/lib.rs")).unwrap();
    let module = lib.find("pub mod fuzzing;").expect("the fuzzing module");
    let attributes = lib[..module].lines().rev().take(2).collect::<Vec<_>>();
    assert!(
        attributes.contains(&"#[cfg(feature = \"fuzzing\")]"),
        "the fuzzing module is behind its feature: {attributes:?}"
    );
    let bins = manifest["bin"].as_array().unwrap();
    assert!(bins.iter().all(|b| b["required-features"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f.as_str() == Some("cli")))));
}
