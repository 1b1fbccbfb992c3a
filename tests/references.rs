//! Every file the repository names is in the repository: a Markdown link, or
//! a path such as `docs/coder-api.md` written in a document, a comment or a
//! chart, resolves to a file or directory of this checkout. A reader who
//! follows one never lands outside the project.
//!
//! No server: the test walks the checkout's own text files.

use std::fs;
use std::path::{Path, PathBuf};

/// The top-level directories of the repository: a path written from one of
/// them names a file of the project.
const ROOTS: [&str; 11] =
    ["docs", "src", "tests", "charts", "integrations", "tools", "sim", "testbed", "benches", "crds", "examples"];

/// Text that documents or configures the project.
const TEXT: [&str; 9] = ["md", "rs", "yaml", "yml", "toml", "sh", "lua", "env", "json"];

/// Directories that are not the project's own text.
const SKIP: [&str; 5] = ["target", ".tools", ".git", "node_modules", "golden"];

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !SKIP.contains(&name.as_str()) {
                text_files(&path, found);
            }
        } else if name == "Makefile" || path.extension().and_then(|e| e.to_str()).is_some_and(|e| TEXT.contains(&e)) {
            found.push(path);
        }
    }
}

/// Relative targets of Markdown links, `[text](target)`, without anchors.
fn markdown_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default().trim();
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external && !target.contains(' ') {
            links.push(target.to_string());
        }
        rest = &rest[end..];
    }
    links
}

/// Paths written from one of the repository's top-level directories, such
/// as `docs/testing.md` or `src/index/poller.rs`. A path that continues a
/// longer one (`kube-runtime/src/scheduler.rs`, a URL, `/sim/faults`, an
/// HTTP route of the simulator) names something else and is left out.
fn repository_paths(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut paths = Vec::new();
    for root in ROOTS {
        let needle = format!("{root}/");
        let mut from = 0;
        while let Some(found) = text[from..].find(&needle) {
            let start = from + found;
            from = start + needle.len();
            let continues = start > 0 && {
                let before = bytes[start - 1];
                before.is_ascii_alphanumeric() || b"_./:-@~$*{".contains(&before)
            };
            if continues {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
                .map_or(text.len(), |n| start + n);
            let path = text[start..end].trim_end_matches(['.', '/', '-']);
            // A bare directory name followed by prose ("tests/ and docs/")
            // says little; a file or a nested path is a reference.
            if path.len() > needle.len() && !path.contains("..") {
                paths.push(path.to_string());
            }
        }
    }
    paths
}

/// Where a path can be read from: the repository's root, the file's own
/// directory, or the root of the crate the file belongs to (`sim/`,
/// `testbed/` write their own `tests/`, `src/`).
fn resolves(repository: &Path, file: &Path, path: &str) -> bool {
    let mut bases = vec![repository.to_path_buf()];
    if let Some(dir) = file.parent() {
        bases.push(dir.to_path_buf());
        let mut crate_root = Some(dir);
        while let Some(dir) = crate_root {
            if dir.join("Cargo.toml").exists() {
                bases.push(dir.to_path_buf());
                break;
            }
            crate_root = dir.parent();
        }
    }
    bases.iter().any(|base| base.join(path).exists())
}

fn unresolved(repository: &Path) -> Vec<String> {
    let mut files = Vec::new();
    text_files(repository, &mut files);
    assert!(files.len() > 50, "found only {} text files under {}", files.len(), repository.display());
    let mut missing = Vec::new();
    for file in files {
        let shown = file.strip_prefix(repository).unwrap_or(&file).display().to_string();
        // This file's examples name missing files on purpose.
        if shown == "tests/references.rs" {
            continue;
        }
        let Ok(text) = fs::read_to_string(&file) else { continue };
        let is_markdown = file.extension().is_some_and(|e| e == "md");
        let links = if is_markdown { markdown_links(&text) } else { Vec::new() };
        for link in links {
            let target = file.parent().map(|dir| dir.join(&link));
            if !target.is_some_and(|t| t.exists()) {
                missing.push(format!("{shown}: link to {link}"));
            }
        }
        for path in repository_paths(&text) {
            if !resolves(repository, &file, &path) {
                missing.push(format!("{shown}: {path}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    missing
}

#[test]
fn every_file_the_repository_names_is_in_the_repository() {
    let missing = unresolved(&repository());
    assert!(
        missing.is_empty(),
        "these references name no file of the repository (fix the reference, or add the file):\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn a_reference_to_a_missing_file_is_found() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = dir.path();
    fs::create_dir_all(root.join("docs")).expect("docs/");
    fs::write(root.join("docs/here.md"), "# Here\n").expect("docs/here.md");
    // Enough files that the walk is not taken for an empty checkout.
    for n in 0..60 {
        fs::write(root.join(format!("docs/filler-{n}.md")), "see docs/here.md\n").expect("a filler");
    }
    fs::write(
        root.join("README.md"),
        "Read [here](docs/here.md) and [gone](docs/gone.md); `docs/missing.md` too, \
         but not https://example.invalid/docs/elsewhere.md or kube-runtime/src/scheduler.rs.\n",
    )
    .expect("README.md");
    assert_eq!(
        unresolved(root),
        ["README.md: docs/gone.md", "README.md: docs/missing.md", "README.md: link to docs/gone.md"]
    );
}

#[test]
fn paths_are_read_as_written() {
    assert_eq!(repository_paths("see `src/index/poller.rs`."), ["src/index/poller.rs"]);
    assert_eq!(repository_paths("upstream kube-runtime/src/scheduler.rs"), Vec::<String>::new());
    assert_eq!(repository_paths("GET /sim/faults"), Vec::<String>::new());
    assert_eq!(repository_paths("in docs/ and tests/"), Vec::<String>::new());
    assert_eq!(markdown_links("[a](docs/testing.md#x) [b](https://x.invalid/b) [c](#c)"), ["docs/testing.md"]);
}

/// The rows of the "Following one resource" table in docs/architecture.md:
/// (file under `src/`, the functions named in it).
fn followed_path(architecture: &str) -> Vec<(String, Vec<String>)> {
    let section = architecture
        .split("### Following one resource")
        .nth(1)
        .expect("docs/architecture.md has a section \"Following one resource\"");
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    section
        .lines()
        .skip_while(|line| !line.starts_with("| 1 |"))
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = ticked(cells[2]).into_iter().next().expect("a file in backticks");
            (file, ticked(cells[3]))
        })
        .collect()
}

#[test]
fn the_path_of_one_resource_names_functions_that_exist_and_returns_to_a_file_at_most_five_times() {
    let repository = repository();
    let architecture = fs::read_to_string(repository.join("docs/architecture.md")).expect("docs/architecture.md");
    let rows = followed_path(&architecture);
    assert!(rows.len() >= 8, "the table has {} rows", rows.len());
    for (file, functions) in &rows {
        let source = fs::read_to_string(repository.join("src").join(file))
            .unwrap_or_else(|e| panic!("src/{file}, named in docs/architecture.md: {e}"));
        for function in functions {
            let name = function.rsplit("::").next().unwrap_or(function);
            assert!(
                source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<")),
                "docs/architecture.md says src/{file} has `{function}`; it has no `fn {name}`"
            );
        }
    }
    let mut left = Vec::new();
    let mut returns = 0;
    for pair in rows.windows(2) {
        let (from, to) = (&pair[0].0, &pair[1].0);
        if from != to {
            left.push(from.clone());
            returns += usize::from(left.contains(to));
        }
    }
    assert!(returns <= 5, "following one resource returns to a file already left {returns} times");
}
