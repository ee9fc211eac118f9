//! README.md states nothing stale: every repository path it names (in backticks, code blocks or
//! links) exists, every `tally <command>` it names is a subcommand of the built binary, and it
//! stays short enough to be read first (at most 500 lines; benchmark records live in
//! `tests/bench/`, schemas in the store modules' docs, the test map in `main.rs`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::support;

const MAX_LINES: usize = 500;

/// Folders of a working copy that hold generated output, not sources: a path under them
/// (`out/demo/…`) is an example of what tally writes, never a file of the repository.
const GENERATED: [&str; 4] = ["out", "target", ".venv", ".git"];

/// Files at the root that the README may name without a folder.
const ROOT_FILES: [&str; 5] = ["Cargo.toml", "Cargo.lock", "Dockerfile", "docker-compose.yml", "README.md"];

/// Extensions of files a repository path may end in. A path with one of these is checked even
/// when its first folder does not exist, so a README naming a folder that was removed fails.
const SOURCE_EXTENSIONS: [&str; 11] = ["rs", "sh", "py", "md", "toml", "sql", "lua", "yml", "json", "html", "txt"];

#[test]
fn every_path_the_readme_names_exists() {
    let readme = readme();
    let mut missing = Vec::new();
    for (line_no, text) in code_and_links(&readme) {
        for path in repo_paths(&text) {
            if !support::repo(&path).exists() {
                missing.push(format!("README.md line {line_no}: `{path}` does not exist"));
            }
        }
    }
    assert!(missing.is_empty(), "README.md names paths that are not in the repository:\n{}", missing.join("\n"));
}

#[test]
fn every_tally_command_the_readme_names_is_a_subcommand() {
    let readme = readme();
    let help = tally_help();
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (line_no, text) in code_and_links(&readme) {
        for command in tally_commands(&text, &help.options_with_value) {
            seen += 1;
            if !help.commands.contains(&command) {
                unknown.push(format!("README.md line {line_no}: `tally {command}` is not a subcommand"));
            }
        }
    }
    assert!(seen > 10, "found only {seen} `tally <command>` mentions: the README parser is broken");
    assert!(
        unknown.is_empty(),
        "README.md names commands `tally --help` does not list ({}):\n{}",
        help.commands.iter().cloned().collect::<Vec<_>>().join(", "),
        unknown.join("\n")
    );
}

#[test]
fn the_readme_is_at_most_500_lines() {
    let lines = readme().lines().count();
    assert!(
        lines <= MAX_LINES,
        "README.md has {lines} lines, more than {MAX_LINES}: move detail where its reader looks \
         (benchmark runs to tests/bench/, designs to the modules' docs, the test map to tests/suite/main.rs)"
    );
}

/// The extraction itself, on lines that look like the README's.
#[test]
fn paths_and_commands_are_found_and_examples_are_not() {
    let paths = |s: &str| repo_paths(s);
    assert_eq!(paths("the store (`src/store/sqlite.rs`, `tests/bench/`)."), ["src/store/sqlite.rs", "tests/bench/"]);
    assert_eq!(paths("tests/run-all.sh"), ["tests/run-all.sh"]);
    assert_eq!(paths("`.ci/run` and `docker-compose.yml`"), [".ci/run", "docker-compose.yml"]);
    assert_eq!(paths("`nowhere/gone.rs`"), ["nowhere/gone.rs"], "a source file under a missing folder is checked");
    for example in [
        "`out/demo/tally.toml`",
        "`AWSLogs/<account>/BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/*.json.gz`",
        "`tests/bench/*.sh`",
        "`fixtures/fuzz/<target>/`",
        "s3://my-bucket/bedrock/ cloudwatch:///aws/bedrock/invocations ./more-logs",
        "https://example.com/a/b.md",
        "`../shared/STYLE.md`",
        "`/data/logs/a.ndjson`",
        "`~/.aws/config`",
        "`tally.invoice/1`",
        "`YYYY/MM/DD/HH`",
        "`…/HH/data/…`",
        "`invoices/.in-flight`",
        "`tally.toml` `margin.sql`",
    ] {
        assert_eq!(paths(example), Vec::<String>::new(), "{example}");
    }

    let value = BTreeSet::from(["--config".to_string(), "--log-format".to_string()]);
    let commands = |s: &str| tally_commands(s, &value);
    assert_eq!(commands("tally --config tally.toml ingest ./logs --follow"), ["ingest"]);
    assert_eq!(commands("cargo run -- --config out/demo/tally.toml meter tenant-0000"), ["meter"]);
    assert_eq!(commands("cargo run -- demo"), ["demo"]);
    assert_eq!(commands("`tally serve` answers; `tally -q --log-format json status`"), ["serve", "status"]);
    assert_eq!(commands("`tally generate`'s logs"), ["generate"]);
    assert_eq!(
        commands("`tally <command> --help`, `tally.toml`, `tally`, \"tally: tenant acme\""),
        Vec::<String>::new()
    );

    let parts = code_and_links(
        "a `tally\nserve` b, [c](queries) and [d](#anchor)\n\n```sh\ntally demo\n```\nplain tests/prose",
    );
    let parts: Vec<(usize, &str)> = parts.iter().map(|(n, s)| (*n, s.as_str())).collect();
    assert_eq!(parts, [(1, "tally"), (2, "serve"), (2, "queries/"), (2, ""), (5, "tally demo")]);
}

fn readme() -> String {
    std::fs::read_to_string(support::repo("README.md")).expect("README.md is readable")
}

/// The parts of each line that may name a path or a command: code spans (which may run on
/// over a line end, never over a blank line), whole lines inside fenced code blocks, and link
/// targets. Plain prose is left out.
fn code_and_links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    let mut in_span = false;
    for (i, line) in markdown.lines().enumerate() {
        let line_no = i + 1;
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            in_span = false;
            continue;
        }
        if in_fence {
            out.push((line_no, line.to_string()));
            continue;
        }
        if line.trim().is_empty() {
            in_span = false;
            continue;
        }
        for (j, piece) in line.split('`').enumerate() {
            if j > 0 {
                in_span = !in_span;
            }
            if in_span {
                out.push((line_no, piece.to_string()));
            } else {
                let mut rest = piece;
                while let Some(start) = rest.find("](") {
                    let after = &rest[start + 2..];
                    let end = after.find(')').unwrap_or(after.len());
                    out.push((line_no, link_target(&after[..end])));
                    rest = &after[end..];
                }
            }
        }
    }
    out
}

/// A link target as a path: no fragment, nothing for URLs and in-page anchors.
fn link_target(target: &str) -> String {
    let target = target.split_whitespace().next().unwrap_or("");
    if target.starts_with('#') || target.contains("://") || target.starts_with("mailto:") {
        return String::new();
    }
    let path = target.split('#').next().unwrap_or("");
    // A bare link such as `[queries/](queries)` names a root folder: give it its slash.
    if !path.contains('/') && !path.contains('.') && !path.is_empty() {
        return format!("{path}/");
    }
    path.to_string()
}

/// The repository-relative paths in `text`: words made only of path characters that start
/// with a top-level folder of the repository (or name a source file, or a known root file),
/// leaving out URLs, globs, placeholders, absolute paths, paths outside the repository and
/// generated output.
fn repo_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '|') {
        let word = word
            .trim_start_matches(['`', '(', '[', '"', '\''])
            .trim_end_matches(['`', ')', ']', '"', '\'', '.', ':', ',']);
        if word.is_empty() || !word.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c)) {
            continue; // URLs (`:`), globs (`*`), placeholders (`<…>`, `…`), code (`::`, `{`).
        }
        if ROOT_FILES.contains(&word) {
            paths.push(word.to_string());
            continue;
        }
        if !word.contains('/') || word.starts_with('/') || word.starts_with("./") || word.starts_with("../") {
            continue;
        }
        let first = word.split('/').next().unwrap_or("");
        if GENERATED.contains(&first) || word.split('/').any(|segment| segment == "..") {
            continue;
        }
        let top_level = support::repo(first).is_dir();
        let source_file =
            Path::new(word).extension().and_then(|e| e.to_str()).is_some_and(|e| SOURCE_EXTENSIONS.contains(&e));
        if top_level || source_file {
            paths.push(word.to_string());
        }
    }
    paths
}

/// The subcommands named in `text`: the first argument that is not an option after `tally`
/// or `cargo run --`, skipping the values of `options_with_value`.
fn tally_commands(text: &str, options_with_value: &BTreeSet<String>) -> Vec<String> {
    let words: Vec<&str> = text.split_whitespace().map(|w| w.trim_matches(['`', '(', '[', '"', '\''])).collect();
    let mut commands = Vec::new();
    for i in 0..words.len() {
        let start = if words[i] == "tally" {
            i + 1
        } else if words[i..].starts_with(&["cargo", "run", "--"]) {
            i + 3
        } else {
            continue;
        };
        let mut j = start;
        while j < words.len() && words[j].starts_with('-') {
            let name = words[j].split('=').next().unwrap_or("");
            j += if options_with_value.contains(name) && !words[j].contains('=') { 2 } else { 1 };
        }
        let Some(word) = words.get(j) else { continue };
        let command: String =
            word.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-').collect();
        let rest = &word[command.len()..];
        if command.is_empty() || rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
            continue; // a placeholder (`<command>`) or not a command at all (`tally.toml`).
        }
        commands.push(command);
    }
    commands
}

struct Help {
    commands: BTreeSet<String>,
    /// Global options that take a value (`--config <CONFIG>`), by every name they have.
    options_with_value: BTreeSet<String>,
}

/// The subcommands and options `tally --help` lists.
fn tally_help() -> Help {
    let out = support::tally_bin().arg("--help").output().expect("tally --help runs");
    assert!(out.status.success(), "tally --help: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("help is UTF-8");
    let mut commands = BTreeSet::new();
    let mut options_with_value = BTreeSet::new();
    let mut section = "";
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if !line.starts_with(' ') {
            section = line.trim_end();
            continue;
        }
        let entry = line.trim_start();
        match section {
            // Entries are indented two spaces; wrapped descriptions further.
            "Commands:" if !line.starts_with("   ") => {
                if let Some(name) = entry.split_whitespace().next() {
                    commands.insert(name.to_string());
                }
            }
            "Options:" if entry.starts_with('-') => {
                let spec = entry.split("  ").next().unwrap_or("");
                if spec.contains('<') {
                    for name in spec.split([',', ' ']).filter(|w| w.starts_with('-')) {
                        options_with_value.insert(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    assert!(commands.contains("ingest") && commands.contains("serve"), "no command list in tally --help:\n{text}");
    Help { commands, options_with_value }
}
