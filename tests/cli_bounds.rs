//! `waypoint serve` refuses out-of-range numbers at start, naming the flag and its limits,
//! instead of panicking or aborting on an allocation later.

use std::process::Command;

/// Runs `waypoint serve --model tiny <args>` and returns (exit code, stderr).
fn serve(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_waypoint"))
        .args(["serve", "--model", "tiny", "--port", "0"])
        .args(args)
        .output()
        .expect("cannot run waypoint");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn out_of_range_flags_are_refused_cleanly() {
    let cases: &[(&[&str], &str)] = &[
        (&["--num-kv-blocks", "10000000000"], "--num-kv-blocks"),
        (
            &["--num-kv-blocks", "18446744073709551615"],
            "--num-kv-blocks",
        ),
        (
            &[
                "--step-tracing-enabled",
                "--step-tracing-span-window",
                "1e300",
            ],
            "--step-tracing-span-window",
        ),
        (&["--max-waiting-requests", "0"], "--max-waiting-requests"),
        (
            &["--shutdown-timeout", "18446744073709551615"],
            "--shutdown-timeout",
        ),
        (&["--header-read-timeout", "0"], "--header-read-timeout"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-request-bytes", "16G"], "--max-request-bytes"),
        (&["--kv-cache-memory", "100000G"], "physical memory"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = serve(args);
        assert!(
            matches!(code, Some(1) | Some(2)),
            "{args:?}: exit {code:?}\n{stderr}"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
