//! `--dtype` is accepted on every device: on the CPU, whose kernels compute in f32, a half
//! type is served in f32 with one warning and the same text; an unknown type is refused.

use std::process::Command;

/// Runs `waypoint generate` on the tiny model, greedily; returns (exit code, stdout, stderr).
fn generate(dtype: &str) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["generate", "--model", "tiny", "--prompt", "hello there"])
        .args(["--max-tokens", "8", "--temperature", "0", "--dtype", dtype])
        .env("RUST_LOG", "warn")
        .output()
        .expect("cannot run waypoint");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn half_precision_on_the_cpu_is_served_in_f32_with_one_warning() {
    let (code, f32_text, f32_log) = generate("f32");
    assert_eq!(code, Some(0), "{f32_log}");
    assert!(!f32_log.contains("served in f32"), "{f32_log}");
    for half in ["f16", "bf16"] {
        let (code, text, log) = generate(half);
        assert_eq!(code, Some(0), "{log}");
        assert_eq!(log.matches("served in f32").count(), 1, "{log}");
        assert_eq!(text, f32_text, "--dtype {half}");
    }
    let (code, text, _) = generate("auto");
    assert_eq!(code, Some(0));
    assert_eq!(text, f32_text);
}

#[test]
fn an_unknown_dtype_is_refused_naming_the_choices() {
    let (code, _, log) = generate("f64");
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--dtype") && log.contains("bf16"), "{log}");
}
