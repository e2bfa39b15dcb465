//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::process::Command;

/// The SmolLM2 GGUF, fetched into the model cache the way the README says, or `None` (with a
/// message saying why) when that is impossible here.
pub fn smollm2_path() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-smollm2.sh");
    match Command::new("bash").arg(&script).output() {
        Ok(out) if out.status.success() => {
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            path.exists().then_some(path)
        }
        Ok(out) => {
            eprintln!(
                "SKIPPED: could not fetch SmolLM2 with {}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: could not run {}: {e}", script.display());
            None
        }
    }
}

/// A file under `../shared/reference`, or `None` (with a message) when this checkout has none.
pub fn reference_file(name: &str) -> Option<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("reference files are valid JSON")),
        Err(e) => {
            eprintln!("SKIPPED: no reference file {}: {e}", path.display());
            None
        }
    }
}

/// `value` as a list of token ids.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}
