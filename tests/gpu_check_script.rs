//! `scripts/gpu-check.sh` on a machine without a GPU: its argument checks, its clean skip, and
//! (with a fake `nvidia-smi` and `--dry-run`) the commands it would run, so that its first
//! run on a GPU does not fail for a silly reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh")
}

/// A directory holding an `nvidia-smi` that prints `stdout` and exits with `status`.
fn fake_nvidia_smi(stdout: &str, status: i32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nvidia-smi");
    std::fs::write(
        &path,
        format!("#!/bin/sh\necho '{stdout}'\nexit {status}\n"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn run(args: &[&str], fake_bin: &Path, out_env: Option<&Path>) -> Output {
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command.arg(script()).args(args).env("PATH", path);
    match out_env {
        Some(out) => command.env("OUT", out),
        None => command.env_remove("OUT"),
    };
    command.output().expect("bash runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn gpu_check_refuses_bad_arguments() {
    let no_gpu = fake_nvidia_smi("NVIDIA-SMI has failed", 9);
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("r.md");
    let results = results.to_str().unwrap();
    for (args, says) in [
        (vec!["--frobnicate"], "unknown argument"),
        (vec!["--out"], "Usage"),
        (vec!["--device", "cpu"], "--device must be cuda"),
        (vec!["--device", "cuda:x"], "--device must be cuda"),
        (vec!["--budget", "600"], "under 600"),
        (vec!["--budget", "5m"], "whole seconds"),
    ] {
        let args = [&["--out", results][..], &args].concat();
        let output = run(&args, no_gpu.path(), None);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!Path::new(results).exists(), "{args:?} wrote results");
    }
}

#[test]
fn gpu_check_without_a_gpu_skips_cleanly_into_out() {
    let no_gpu = fake_nvidia_smi("NVIDIA-SMI has failed because it could not communicate", 9);
    let out = tempfile::tempdir().unwrap();
    let output = run(
        &["--model", "/nonexistent.gguf"],
        no_gpu.path(),
        Some(out.path()),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let results = std::fs::read_to_string(out.path().join("gpu-check.md")).unwrap();
    assert!(
        results.contains("SKIPPED: no NVIDIA GPU here")
            && results.contains("could not communicate"),
        "{results}"
    );
    assert!(!results.contains("## build"), "{results}");
}

#[test]
fn gpu_check_dry_run_plans_every_step_on_the_chosen_gpu() {
    let gpu = fake_nvidia_smi("GPU 0: NVIDIA H200 (UUID: GPU-0)", 0);
    let out = tempfile::tempdir().unwrap();
    let results = out.path().join("nested/figures.md");
    let output = run(
        &[
            "--dry-run",
            "--device",
            "cuda:1",
            "--model",
            "/models/smollm2.gguf",
            "--out",
            results.to_str().unwrap(),
        ],
        gpu.path(),
        None,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let results = std::fs::read_to_string(&results).unwrap();
    for planned in [
        "gpus: GPU 0: NVIDIA H200",
        "cargo build --features cuda",
        "cargo test --features cuda --test smollm2_reference -- --ignored cuda_reference",
        "cargo test --features cuda --test smollm2_reference -- --ignored cuda_bf16_reference",
        "--example model_bench -- --device cuda:1 --dtype auto /models/smollm2.gguf",
        "waypoint serve --device cuda:1 --model /models/smollm2.gguf",
        "scripts/hf_decode_bench.py --model /models/smollm2.gguf --device cuda:1",
    ] {
        assert!(
            results.contains(planned),
            "missing {planned:?} in\n{results}"
        );
    }
    assert!(
        !results.contains("exit status"),
        "a dry run ran something:\n{results}"
    );
}
