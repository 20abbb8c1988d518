//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every input
//! a fuzzer once found a bug with (`fuzz/regressions/<target>/`) through the
//! entry points the cargo-fuzz targets call: a fast, deterministic test that
//! needs neither nightly nor cargo-fuzz. Each entry point panics when its
//! parser panics or breaks the property it states (see `unstuck::fuzzing`).

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("cookie", unstuck::fuzzing::cookie),
    ("header", unstuck::fuzzing::header),
    ("redis_hash", unstuck::fuzzing::redis_hash),
    ("postgres_row", unstuck::fuzzing::postgres_row),
    (
        "tower_sessions_record",
        unstuck::fuzzing::tower_sessions_record,
    ),
];

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, require_inputs: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind);
    for (name, target) in TARGETS {
        let files = inputs(&root.join(name));
        assert!(
            !require_inputs || !files.is_empty(),
            "no committed inputs in {}",
            root.join(name).display()
        );
        for file in files {
            let data = std::fs::read(&file).expect("readable input");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", file.display());
        }
    }
}

#[test]
fn every_corpus_input_passes_its_target() {
    replay("corpus", true);
}

#[test]
fn every_input_a_fuzzer_found_a_bug_with_now_passes() {
    replay("regressions", false);
}
