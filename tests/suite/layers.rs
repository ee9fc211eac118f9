//! The floors of `src/`, as README.md's Architecture section lists them: a module imports only
//! from its own floor or the floors below, every module is on a floor, and no files import each
//! other in a circle (within a module, through `super::` and `crate::` paths, or between
//! modules). Read from the source text, so it needs no build of its own; `#[cfg(test)]`
//! modules are left out (tests may use anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support::repo;

/// Module → floor, from the `<!-- floors -->` block of README.md.
fn floors() -> BTreeMap<String, usize> {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let block = readme
        .split("<!-- floors -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /floors -->").next())
        .expect("README.md has a <!-- floors --> … <!-- /floors --> block");
    let mut out = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (number, rest) =
            line.split_once(". ").unwrap_or_else(|| panic!("floor line {line:?} is not `N. name: `module`, …`"));
        let floor: usize =
            number.trim().parse().unwrap_or_else(|_| panic!("floor line {line:?} does not start with a number"));
        for module in rest.split('`').skip(1).step_by(2) {
            assert!(out.insert(module.to_string(), floor).is_none(), "module `{module}` is on two floors");
        }
    }
    out
}

/// Every `.rs` file under `dir`.
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

/// A file's module path from `src/`: `src/cur/load.rs` → ["cur", "load"]; `mod.rs` names its
/// folder; `lib.rs` is the crate root (no module); a binary's `src/bin/tally/main.rs` names its
/// folder too (["bin", "tally"], the root of that binary's own modules).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let binary_root = parts.len() == 3 && parts[0] == "bin" && parts[2] == "main";
    if parts.last().is_some_and(|p| p == "mod") || parts == ["lib"] || binary_root {
        parts.pop();
    }
    parts
}

/// Where `crate::` points from the file `me`: a binary's own root (["bin", name]) from a file
/// under `src/bin/<name>/`, else the library's root.
fn crate_root(me: &[String]) -> Vec<String> {
    if me.len() >= 2 && me[0] == "bin" {
        me[..2].to_vec()
    } else {
        Vec::new()
    }
}

/// The text a file builds into, without its `#[cfg(test)]` modules and its comments.
fn built_text(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ")) {
            // Skip the module: up to the closing brace at the indentation it opened at.
            let open = lines.next().unwrap();
            let indent = open.len() - open.trim_start().len();
            if open.trim_end().ends_with(';') {
                continue;
            }
            for inner in lines.by_ref() {
                if inner.len() - inner.trim_start().len() == indent && inner.trim() == "}" {
                    break;
                }
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The module paths a file names: `crate::a::b`, `tally::a::b` (the library, from the binary),
/// `super::x`, and the names inside `crate::{…}` groups, as far as they go (`crate::a::b::Item`
/// → [a, b, Item]). In a binary's files `crate::` is the binary's root (see [`crate_root`]).
fn named_paths(text: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let ident = |i: usize| -> (String, usize) {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        (text[i..j].to_string(), j)
    };
    // A path from `at` (just after `root::`), through `::`, with `{a, b::c}` groups expanded.
    fn walk(
        text: &str,
        mut at: usize,
        base: Vec<String>,
        out: &mut Vec<Vec<String>>,
        ident: &dyn Fn(usize) -> (String, usize),
    ) {
        let b = text.as_bytes();
        let mut path = base;
        loop {
            if b.get(at) == Some(&b'{') {
                let mut depth = 0;
                let mut start = at + 1;
                let mut i = at;
                while i < b.len() {
                    match b[i] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                walk(text, skip_ws(b, start), path.clone(), out, ident);
                                return;
                            }
                        }
                        b',' if depth == 1 => {
                            walk(text, skip_ws(b, start), path.clone(), out, ident);
                            start = i + 1;
                        }
                        _ => {}
                    }
                    i += 1;
                }
                return;
            }
            let (name, end) = ident(at);
            if name.is_empty() {
                break;
            }
            path.push(name);
            if text[end..].starts_with("::") {
                at = end + 2;
            } else {
                break;
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    fn skip_ws(b: &[u8], mut i: usize) -> usize {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    }
    for root in ["crate::", "tally::", "super::"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(root) {
            let at = from + found;
            from = at + root.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let base = match root {
                "super::" => {
                    // `super` of `a/b.rs` is `a`; of `a/mod.rs` (the module `a`), the crate.
                    me[..me.len().saturating_sub(1)].to_vec()
                }
                "crate::" => crate_root(me),
                _ => Vec::new(),
            };
            walk(text, from, base, &mut out, &ident);
        }
    }
    out
}

struct Tree {
    /// Module path → its file.
    files: BTreeMap<Vec<String>, PathBuf>,
    /// File → the files it imports from.
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_tree() -> Tree {
    let src = repo("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: BTreeMap<Vec<String>, PathBuf> = paths.iter().map(|p| (module_path(&src, p), p.clone())).collect();
    let mut edges = BTreeMap::new();
    for (me, file) in &files {
        let text = built_text(&std::fs::read_to_string(file).unwrap());
        let mut to = BTreeSet::new();
        for path in named_paths(&text, me) {
            // The longest prefix that is a file of src/.
            if let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| files.contains_key(p)) {
                if &target != me && !me.starts_with(&target) {
                    to.insert(target);
                }
            }
        }
        edges.insert(me.clone(), to);
    }
    Tree { files, edges }
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

#[test]
fn every_module_is_on_a_floor_and_imports_only_from_its_floor_or_below() {
    let floors = floors();
    let tree = read_tree();
    let mut wrong = Vec::new();
    let top = |m: &Vec<String>| m.first().cloned().unwrap_or_default();
    for m in tree.files.keys().filter(|m| !m.is_empty()) {
        if !floors.contains_key(&top(m)) {
            wrong.push(format!(
                "src/{}: the module `{}` is on no floor (add it to README.md's floors)",
                show(m),
                top(m)
            ));
        }
    }
    for (from, tos) in &tree.edges {
        let (Some(&f), false) = (floors.get(&top(from)), from.is_empty()) else { continue };
        for to in tos {
            if let Some(&t) = floors.get(&top(to)) {
                if t > f {
                    wrong.push(format!(
                        "{} (floor {f}) imports {} (floor {t}), a floor above it",
                        show(from),
                        show(to)
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} layering faults:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let tree = read_tree();
    // Every module's files as nodes; also each top-level module as a whole (a circle between
    // two modules may run through different files of each).
    let mut circles = Vec::new();
    let mut graphs: Vec<BTreeMap<Vec<String>, BTreeSet<Vec<String>>>> = vec![tree.edges.clone()];
    let mut modules: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (from, tos) in &tree.edges {
        let f: Vec<String> = from.iter().take(1).cloned().collect();
        for to in tos {
            let t: Vec<String> = to.iter().take(1).cloned().collect();
            if f != t && !f.is_empty() {
                modules.entry(f.clone()).or_default().insert(t);
            }
        }
    }
    graphs.push(modules);
    for graph in &graphs {
        // Depth-first search; a back edge closes a circle.
        let mut state: BTreeMap<&Vec<String>, u8> = BTreeMap::new();
        fn visit<'g>(
            n: &'g Vec<String>,
            g: &'g BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
            state: &mut BTreeMap<&'g Vec<String>, u8>,
            stack: &mut Vec<&'g Vec<String>>,
            circles: &mut Vec<String>,
        ) {
            state.insert(n, 1);
            stack.push(n);
            for next in g.get(n).into_iter().flatten() {
                match state.get(next).copied().unwrap_or(0) {
                    0 => visit(next, g, state, stack, circles),
                    1 => {
                        let start = stack.iter().position(|s| *s == next).unwrap();
                        let mut names: Vec<String> = stack[start..].iter().map(|s| show(s)).collect();
                        names.push(show(next));
                        circles.push(names.join(" -> "));
                    }
                    _ => {}
                }
            }
            stack.pop();
            state.insert(n, 2);
        }
        for n in graph.keys() {
            if state.get(n).copied().unwrap_or(0) == 0 {
                visit(n, graph, &mut state, &mut Vec::new(), &mut circles);
            }
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_reader_finds_paths_groups_and_super() {
    let me = vec!["cur".to_string(), "load".to_string()];
    let text = built_text("use crate::{ids::TenantId, store::{self, Batch}};\nuse super::scan::{Groups};\n// use crate::serve;\nfn f() { crate::money::to_units(x); }\n#[cfg(test)]\nmod tests {\n    use crate::config::Config;\n}\n");
    let mut got: Vec<String> = named_paths(&text, &me).iter().map(|p| p.join("::")).collect();
    got.sort();
    assert_eq!(got, ["cur::scan::Groups", "ids::TenantId", "money::to_units", "store::Batch", "store::self"]);
}

/// In the binary, `crate::` names its own files and `tally::` the library's.
#[test]
fn the_reader_resolves_the_binarys_own_modules() {
    let src = repo("src");
    assert_eq!(module_path(&src, &src.join("bin/tally/main.rs")), ["bin", "tally"]);
    assert_eq!(module_path(&src, &src.join("bin/tally/commands/mod.rs")), ["bin", "tally", "commands"]);
    let me = vec!["bin".to_string(), "tally".to_string(), "commands".to_string(), "demo".to_string()];
    let text = "use crate::{args::Global, print};\nuse super::ingest::run;\nuse tally::progress::Progress;\n";
    let mut got: Vec<String> = named_paths(text, &me).iter().map(|p| p.join("::")).collect();
    got.sort();
    assert_eq!(
        got,
        ["bin::tally::args::Global", "bin::tally::commands::ingest::run", "bin::tally::print", "progress::Progress"]
    );
}
