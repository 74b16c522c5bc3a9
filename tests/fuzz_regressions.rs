//! Replays every saved fuzz input on stable, through the same checks the cargo-fuzz targets
//! run (`fuzz/checks.rs`): inputs that once crashed a target stay fixed, and the seed inputs
//! keep the checks themselves honest. Add a file to `tests/fuzz_inputs/<target>/` to add a case.

#[allow(dead_code)]
#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_inputs")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// Runs `check` on every input of `target`, then fails naming every input that panicked.
fn replay(target: &str, check: impl Fn(&[u8]) + panic::RefUnwindSafe) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter_map(|path| {
            let data = fs::read(&path).expect("read fuzz input");
            panic::catch_unwind(|| check(&data))
                .err()
                .map(|_| path.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "{target} fails on: {failed:#?}");
}

#[test]
fn frontend_message_inputs_decode_without_panicking() {
    replay("frontend_messages", checks::frontend_messages);
}

#[test]
fn classify_inputs_classify_without_panicking() {
    replay("classify", checks::classify_bytes);
}
