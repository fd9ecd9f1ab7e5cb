//! Compiles the PERSON gazetteer (`data/names/`, see its README) into an FST map in
//! `OUT_DIR/names.fst`, which `src/redact/detect/person.rs` embeds with `include_bytes!`.
//! Keys are lowercase names; values are bit flags: 1 = given name, 2 = surname.

use std::collections::BTreeMap;
use std::path::Path;

fn main() {
    let mut names: BTreeMap<String, u64> = BTreeMap::new();
    for (file, flag) in [
        ("data/names/given.txt", 1u64),
        ("data/names/surnames.txt", 2),
    ] {
        println!("cargo::rerun-if-changed={file}");
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            *names.entry(line.to_lowercase()).or_insert(0) |= flag;
        }
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    // BTreeMap iterates in byte order, which is what the builder needs.
    let map = fst::Map::from_iter(names).expect("sorted, unique keys");
    std::fs::write(Path::new(&out).join("names.fst"), map.as_fst().as_bytes())
        .expect("write names.fst");
}
