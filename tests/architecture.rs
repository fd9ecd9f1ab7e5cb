//! The import rules of `docs/architecture.md`, checked on the source tree.
//!
//! Each folder of `src/` is one step of the flow and may only look downstream through the
//! types it is handed. This test reads every `.rs` file under a folder (`src/proxy/**` and a
//! `src/proxy.rs` twin alike, so files can move inside a folder freely) and fails when code
//! names a forbidden module: `crate::seal::...`, `use crate::{export, ...}`, or a `super::`
//! chain that climbs to the crate root and back down. Comments are skipped (a doc link is not
//! a dependency); test code is not: a test that borrows another step's fixtures couples the
//! steps too, so the few such borrowings that exist are listed in [`KNOWN`] with a reason, and
//! the test fails when one of them goes away so the list cannot rot.
//!
//! Why a test and not a lint: rustc and clippy have no per-module import ban, and a test runs
//! with `cargo test`, where a contributor looks first. The rejected alternative, one crate per
//! step, costs build time and `pub` surface on a 2-core machine for no behaviour gained.

use std::fs;
use std::path::{Path, PathBuf};

/// (folder, modules it must never import, why). Mirrored by the table in
/// `docs/architecture.md` ("Imports that must never exist"); [`the_doc_lists_every_rule`]
/// keeps the two in step.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "proxy",
        &["redact", "rules", "export", "seal"],
        "the hot path forwards bytes; recording happens off it, after the queue",
    ),
    (
        "export",
        &["seal"],
        "the two sinks are independent: one failing never blocks or reaches the other",
    ),
    (
        "seal",
        &["export"],
        "the two sinks are independent: one failing never blocks or reaches the other",
    ),
    (
        "exchange",
        &["proxy"],
        "the arrows run proxy -> exchange, never back",
    ),
    (
        "record",
        &["proxy", "export", "seal", "ledger"],
        "the arrows run exchange -> record -> sinks, never back",
    ),
    (
        "ledger",
        &["proxy", "seal", "redact"],
        "the ledger reads records only: never an exchange's raw content, never the sealed store",
    ),
    (
        "counters",
        &[
            "proxy", "exchange", "redact", "record", "pipeline", "export", "ledger", "seal",
            "admin", "cli", "server", "health", "journal", "config",
        ],
        "a leaf: every step counts with it, so it depends on none of them",
    ),
];

/// Forbidden references that exist today, each with its reason: (file, exact path, why).
/// Test-fixture borrowings only; phase 2 of veil#11 moves the shared fixtures to one
/// test-support module, and then these entries must go (the test fails while a listed
/// reference no longer exists).
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "src/export/spool.rs",
        "crate::seal::tests::Tmpfs::mount",
        "test fixture: the tmpfs mount for disk-full tests lives in seal's tests",
    ),
    (
        "src/export/ledger.rs",
        "crate::seal::tests::Tmpfs::mount",
        "test fixture: the tmpfs mount for disk-full tests lives in seal's tests",
    ),
    (
        "src/export/tests/counters.rs",
        "crate::seal::tests::openai_chat",
        "test fixture: any Exchange to push into a closed queue",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file of module `folder`: `src/<folder>.rs` and `src/<folder>/**/*.rs`, sorted.
fn files_of(folder: &str) -> Vec<PathBuf> {
    let src = root().join("src");
    let mut out = Vec::new();
    let twin = src.join(format!("{folder}.rs"));
    if twin.is_file() {
        out.push(twin);
    }
    let mut dirs = vec![src.join(folder)];
    // Bounded: the tree is finite and has no symlink loops; the cap guards against one.
    let mut visited = 0;
    while let Some(dir) = dirs.pop() {
        visited += 1;
        assert!(visited < 10_000, "runaway directory walk under {folder}");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.expect("readable directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Module depth of a file below the crate root: `src/proxy.rs` and `src/proxy/mod.rs` are 1,
/// `src/proxy/forward.rs` is 2. A `super::` chain this long reaches the crate root.
fn depth(rel: &Path) -> usize {
    let parts: Vec<_> = rel.iter().skip(1).collect(); // skip "src"
    let last = parts.last().map(|p| p.to_string_lossy().into_owned());
    match last.as_deref() {
        Some("mod.rs") => parts.len() - 1,
        _ => parts.len(),
    }
}

/// The source with comments blanked out (line and block comments; string literals kept
/// as they are, which only errs towards reporting).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c as char);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
        } else if c == b'r'
            && (!ident_byte(b, i, 1) || (b[i - 1] == b'b' && !ident_byte(b, i, 2)))
            && let Some(hashes) = raw_string_hashes(&src[i + 1..])
        {
            // r"..." / r#"..."#: no escapes, ends at `"` and the same number of `#`.
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let end = src[body..]
                .find(&close)
                .map_or(b.len(), |e| body + e + close.len());
            out.push_str(&src[i..end]);
            i = end;
        } else if c == b'\'' && i + 1 < b.len() && b[i + 1] == b'\\' {
            // An escaped char literal ('\'', '\\', '\n'): copy through its closing quote.
            let end = src
                .get(i + 3..)
                .and_then(|s| s.find('\''))
                .map_or(b.len(), |e| i + 3 + e + 1);
            out.push_str(&src[i..end]);
            i = end;
        } else if c == b'\'' && src[i + 1..].chars().nth(1) == Some('\'') {
            // A plain char literal ('"'); a lifetime ('a) has no closing quote there.
            let ch = src[i + 1..].chars().next().expect("in bounds");
            let end = i + 1 + ch.len_utf8() + 1;
            out.push_str(&src[i..end]);
            i = end;
        } else if c == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
        } else if src[i..].starts_with("//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if src[i..].starts_with("/*") {
            let mut level = 0usize;
            while i < b.len() {
                if src[i..].starts_with("/*") {
                    level += 1;
                    i += 2;
                } else if src[i..].starts_with("*/") {
                    level -= 1;
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else {
            // Copy one whole UTF-8 character.
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// True when the byte `back` places before `i` exists and can be part of an identifier.
fn ident_byte(b: &[u8], i: usize, back: usize) -> bool {
    i >= back && (b[i - back].is_ascii_alphanumeric() || b[i - back] == b'_')
}

/// After an `r`: the number of `#` of a raw string opening (`"`, `#"`, `##"`), if it is one.
fn raw_string_hashes(s: &str) -> Option<usize> {
    let hashes = s.bytes().take_while(|c| *c == b'#').count();
    (s.as_bytes().get(hashes) == Some(&b'"')).then_some(hashes)
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level names of the crate a piece of code refers to, with the full path as written:
/// `crate::seal::tests::Tmpfs` → (`seal`, that path); `use crate::{export, seal::X}` → both;
/// `super::super::seal` in a file of depth 2 → (`seal`, ...).
fn crate_refs(code: &str, depth: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let is_boundary = |s: &str, at: usize| {
        at == 0 || {
            let p = s.as_bytes()[at - 1];
            !(p.is_ascii_alphanumeric() || p == b'_' || p == b':')
        }
    };
    let full_path = |s: &str| -> String {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(s.len());
        s[..end].trim_end_matches(':').to_string()
    };
    // `crate::name` and `crate::{a, b::c}`.
    let mut from = 0;
    while let Some(off) = code[from..].find("crate::") {
        let at = from + off;
        from = at + "crate::".len();
        if !is_boundary(code, at) {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let close = group.find('}').unwrap_or(group.len());
            for item in group[..close].split(',') {
                let item = item.trim();
                let name = ident_at(item);
                if !name.is_empty() {
                    out.push((name.to_string(), format!("crate::{}", full_path(item))));
                }
            }
        } else {
            let name = ident_at(rest);
            if !name.is_empty() {
                out.push((name.to_string(), format!("crate::{}", full_path(rest))));
            }
        }
    }
    // `super::super::name`, climbing to the crate root.
    if depth > 0 {
        let chain = "super::".repeat(depth);
        let mut from = 0;
        while let Some(off) = code[from..].find(&chain) {
            let at = from + off;
            from = at + chain.len();
            if !is_boundary(code, at) {
                continue;
            }
            let rest = &code[from..];
            let name = ident_at(rest);
            if !name.is_empty() && name != "super" {
                out.push((name.to_string(), format!("{chain}{}", full_path(rest))));
            }
        }
    }
    out
}

/// Every forbidden reference in the tree: (file relative to the crate, path, rule's why).
fn violations() -> Vec<(String, String, &'static str)> {
    let mut found = Vec::new();
    for (folder, banned, why) in RULES {
        let files = files_of(folder);
        assert!(
            !files.is_empty(),
            "no source for folder `{folder}`: update RULES and docs/architecture.md"
        );
        for file in files {
            let rel = file
                .strip_prefix(root())
                .expect("under the crate")
                .to_path_buf();
            let code = strip_comments(&fs::read_to_string(&file).expect("readable source"));
            for (name, path) in crate_refs(&code, depth(&rel)) {
                if banned.contains(&name.as_str()) {
                    found.push((rel.display().to_string(), path, *why));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_folder_imports_what_docs_architecture_md_forbids() {
    let found = violations();
    let new: Vec<_> = found
        .iter()
        .filter(|(file, path, _)| !KNOWN.iter().any(|(f, p, _)| f == file && p == path))
        .collect();
    assert!(
        new.is_empty(),
        "forbidden imports (docs/architecture.md, \"Imports that must never exist\"):\n{}",
        new.iter()
            .map(|(file, path, why)| format!("  {file}: {path}  ({why})"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (file, path, why) in KNOWN {
        assert!(
            found.iter().any(|(f, p, _)| f == file && p == path),
            "{file} no longer refers to {path}: remove it from KNOWN ({why})"
        );
    }
}

#[test]
fn the_doc_lists_every_rule() {
    let doc =
        fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md");
    for (folder, banned, _) in RULES {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{folder}` |")))
            .unwrap_or_else(|| panic!("docs/architecture.md has no rule row for `{folder}`"));
        for b in *banned {
            assert!(
                row.contains(&format!("`{b}`")),
                "docs/architecture.md's row for `{folder}` does not name `{b}`: {row}"
            );
        }
    }
}

/// The scanner itself: each form of reference is found, comments and look-alikes are not.
#[test]
fn the_scanner_finds_every_form_of_a_crate_reference() {
    let names = |code: &str, depth: usize| -> Vec<String> {
        crate_refs(&strip_comments(code), depth)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(names("use crate::seal::SealStore;", 1), ["seal"]);
    assert_eq!(names("let s = crate::seal::open();", 2), ["seal"]);
    assert_eq!(
        names("use crate::{export, seal::X};", 1),
        ["export", "seal"]
    );
    assert_eq!(names("use super::super::seal::X;", 2), ["seal"]);
    // One `super` from depth 2 stays inside the folder.
    assert!(names("use super::seal::X;", 2).is_empty());
    assert!(names("// use crate::seal::X;\n/* crate::export */ fn f() {}", 1).is_empty());
    assert!(names("/// See [`crate::seal::SealStore`].\nfn f() {}", 1).is_empty());
    assert!(names("use my_crate::seal::X;", 1).is_empty());
    // Quotes in char and raw-string literals do not hide the comments that follow.
    assert!(names("let q = '\"'; // crate::seal\nfn f() {}", 1).is_empty());
    assert!(names("let q = '\\''; // crate::seal\nfn f<'a>() {}", 1).is_empty());
    assert!(names("let j = r#\"{\"a\":1}\"#; // crate::seal\n", 1).is_empty());
    assert!(names("let j = br#\"\"\"#; // crate::seal\n", 1).is_empty());
    // A path inside a string is reported (errs towards a failure a human then reads).
    assert_eq!(names(r#"let p = "crate::seal";"#, 1), ["seal"]);
    assert_eq!(
        crate_refs("crate::seal::tests::Tmpfs::mount(", 2),
        [(
            "seal".to_string(),
            "crate::seal::tests::Tmpfs::mount".to_string()
        )]
    );
    assert_eq!(depth(Path::new("src/proxy/mod.rs")), 1);
    assert_eq!(depth(Path::new("src/proxy.rs")), 1);
    assert_eq!(depth(Path::new("src/export/otlp/span.rs")), 3);
}

/// Files outside `src/cli/` (and `main.rs`, which only calls it) that name `anyhow` or
/// `clap` in code: the operator boundary of docs/architecture.md keeps both in `src/cli/`, so
/// the library's steps return typed errors a caller can match on.
fn front_end_crates_outside_cli() -> Vec<(String, &'static str)> {
    let root = root();
    let mut hits = Vec::new();
    let mut dirs = vec![root.join("src")];
    let mut visited = 0;
    while let Some(dir) = dirs.pop() {
        visited += 1;
        assert!(visited < 10_000, "runaway directory walk under src");
        for e in fs::read_dir(&dir).expect("readable src directory") {
            let path = e.expect("readable directory entry").path();
            let rel = path.strip_prefix(&root).unwrap().to_path_buf();
            if rel.starts_with("src/cli") || rel == Path::new("src/main.rs") {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let code = strip_comments(&fs::read_to_string(&path).expect("readable source"));
            for name in ["anyhow", "clap"] {
                let b = code.as_bytes();
                let found = code.match_indices(name).any(|(i, _)| {
                    !ident_byte(b, i, 1)
                        && b.get(i + name.len())
                            .is_none_or(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                        && code[i + name.len()..].starts_with("::")
                });
                if found {
                    hits.push((rel.display().to_string(), name));
                }
            }
        }
    }
    hits.sort();
    hits
}

#[test]
fn anyhow_and_clap_appear_only_under_src_cli() {
    let hits = front_end_crates_outside_cli();
    assert!(
        hits.is_empty(),
        "anyhow/clap outside src/cli/ (return a typed error, or move the front-end to src/cli/): {hits:?}"
    );
}

/// True when `code` has `name` as a whole identifier: `Config` in `crate::config::Config`,
/// not in `ServerConfig`, `RawConfig` or `Configs`.
fn names_ident(code: &str, name: &str) -> bool {
    let b = code.as_bytes();
    code.match_indices(name).any(|(i, _)| {
        !ident_byte(b, i, 1)
            && b.get(i + name.len())
                .is_none_or(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
    })
}

/// Files under `src/proxy/` other than `settings.rs` that name the resolved `Config` in code
/// (test code included; tests describe their input as a `RawConfig` and resolve it through
/// `ProxySettings::from_raw`).
fn config_readers_in_proxy() -> Vec<String> {
    let mut hits = Vec::new();
    for file in files_of("proxy") {
        let rel = file
            .strip_prefix(root())
            .expect("under the crate")
            .to_path_buf();
        if rel == Path::new("src/proxy/settings.rs") {
            continue;
        }
        let code = strip_comments(&fs::read_to_string(&file).expect("readable source"));
        if names_ident(&code, "Config") {
            hits.push(rel.display().to_string());
        }
    }
    hits
}

/// The proxy reads the configuration in one place, `ProxySettings::from_config`, which also
/// builds each stage's own settings (connection limits, destination policy, CA scope); every
/// other file reads its part of `ProxySettings` (docs/architecture.md). A stage that took the
/// whole `Config` would hide what the hot path depends on and need a full configuration to
/// test.
#[test]
fn only_proxy_settings_reads_the_whole_config() {
    let hits = config_readers_in_proxy();
    assert!(
        hits.is_empty(),
        "src/proxy files naming `Config` (read a field of ProxySettings instead, built in \
         src/proxy/settings.rs): {hits:?}"
    );
    // The scanner itself.
    assert!(names_ident("use crate::config::{Audit, Config};", "Config"));
    assert!(names_ident("fn of(c: &crate::config::Config) {}", "Config"));
    assert!(!names_ident("let c: rustls::ServerConfig = x;", "Config"));
    assert!(!names_ident("use crate::config::RawConfig;", "Config"));
    assert!(!names_ident("struct Configs;", "Config"));
}

/// The file map of `src/proxy/` (docs/architecture.md, "Inside `src/proxy/`") and the copy
/// that opens `src/proxy/mod.rs` are the same rows, and every file of the folder (tests
/// aside) has a row, so a new stage cannot arrive undocumented and the two copies cannot
/// drift apart.
#[test]
fn the_proxy_file_map_names_every_file_and_matches_mod_rs() {
    let doc =
        fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md");
    let section = doc
        .split("### Inside `src/proxy/`")
        .nth(1)
        .expect("docs/architecture.md has an \"Inside `src/proxy/`\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let doc_rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
    let mod_rs = fs::read_to_string(root().join("src/proxy/mod.rs")).expect("src/proxy/mod.rs");
    let mod_rows: Vec<&str> = mod_rs
        .lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter(|l| l.starts_with("| `"))
        .collect();
    assert!(!doc_rows.is_empty(), "no file rows in docs/architecture.md");
    assert_eq!(
        doc_rows, mod_rows,
        "the file map in src/proxy/mod.rs differs from docs/architecture.md"
    );
    let mut entries: Vec<_> = fs::read_dir(root().join("src/proxy"))
        .expect("src/proxy")
        .map(|e| e.expect("readable directory entry").file_name())
        .collect();
    entries.sort();
    for name in entries {
        let name = name.to_string_lossy();
        if name == "mod.rs" || name.ends_with("_tests.rs") || !name.ends_with(".rs") {
            continue;
        }
        assert!(
            doc_rows.iter().any(|row| {
                let first_cell = row.split(" | ").next().unwrap_or("");
                first_cell.contains(&format!("`{name}`"))
            }),
            "src/proxy/{name} has no row in docs/architecture.md's file map (and mod.rs's copy)"
        );
    }
}
