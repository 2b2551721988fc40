//! Hand-written cases, `corpus/*.json`: each file an array of
//! `{"name": ..., "reader": <schema>, "writer": <schema>}`, checked in both directions.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::Pair;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    reader: Value,
    writer: Value,
}

pub fn hand_written() -> Vec<Pair> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());

    let mut pairs = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let cases: Vec<Case> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let file = file.file_name().expect("a file name").to_string_lossy();
        for case in cases {
            pairs.push(Pair {
                origin: format!("{file}: {}", case.name),
                reader: case.reader.clone(),
                writer: case.writer.clone(),
            });
            pairs.push(Pair {
                origin: format!("{file}: {} (reversed)", case.name),
                reader: case.writer,
                writer: case.reader,
            });
        }
    }
    pairs
}
