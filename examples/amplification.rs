//! Amplification benchmark for a running `waypoint serve` (`docs/BENCHMARKS.md`).
//!
//! ```sh
//! cargo run --release --example amplification -- http://127.0.0.1:8000 SERVER_PID
//! ```
//!
//! 1. A victim's 64-token completion, alone (median of 5).
//! 2. The same beside 4 plain clients looping over 64-token completions (the control: the
//!    batch is shared five ways), then beside 4 attackers sending the same completions with
//!    the worst stop strings allowed (16 strings that never match, 2048 bytes together) and
//!    a 4 MB prompt each.
//! 3. 4 MB prompts one at a time: how long the refusal takes, and the server's RSS growth.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

const VICTIM_RUNS: usize = 3;
const ATTACKERS: usize = 4;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn completion(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Duration) {
    let started = Instant::now();
    let response = client.post(url).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, started.elapsed())
}

fn victim_body() -> Value {
    json!({"prompt": "The capital of France is", "max_tokens": 64, "ignore_eos": true,
           "temperature": 0})
}

async fn victim_median(client: &reqwest::Client, url: &str) -> Duration {
    let mut times = Vec::new();
    for _ in 0..VICTIM_RUNS {
        let (status, time) = completion(client, url, &victim_body()).await;
        assert_eq!(status, 200);
        times.push(time);
    }
    times.sort();
    times[VICTIM_RUNS / 2]
}

/// Runs `measure` while `ATTACKERS` clients loop over 64-token completions (with `stops`
/// if given) and, if given, a refused `huge_prompt` each; returns what `measure` returned
/// and how many huge prompts were refused.
async fn load<F, Fut>(
    client: &reqwest::Client,
    url: &str,
    stops: Option<Vec<String>>,
    huge_prompt: Option<String>,
    measure: F,
) -> (Duration, usize)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..ATTACKERS {
        let client = client.clone();
        let url = url.to_string();
        let stop = stop.clone();
        let stops = stops.clone();
        let huge_prompt = huge_prompt.clone();
        clients.push(tokio::spawn(async move {
            let mut refused = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut body = json!({"prompt": "Tell me a long story", "max_tokens": 64,
                                      "ignore_eos": true});
                if let Some(stops) = &stops {
                    body["stop"] = json!(stops);
                }
                let (status, _) = completion(&client, &url, &body).await;
                assert_eq!(status, 200);
                if let Some(prompt) = &huge_prompt {
                    let (status, _) = completion(&client, &url, &json!({"prompt": prompt})).await;
                    assert_eq!(status, 400);
                    refused += 1;
                }
            }
            refused
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured = measure().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for client in clients {
        refused += client.await.unwrap();
    }
    (measured, refused)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_string());
    let pid: Option<u32> = args.next().and_then(|pid| pid.parse().ok());
    let url = format!("{base}/v1/completions");
    let client = reqwest::Client::new();

    // Warm-up.
    let _ = completion(&client, &url, &victim_body()).await;
    let alone = victim_median(&client, &url).await;
    println!(
        "victim alone: {:.3} s (median of {VICTIM_RUNS})",
        alone.as_secs_f64()
    );

    // Control: the same 4 clients with the same completions but no stop strings and no
    // huge prompts. What the victim loses here is the engine's batch shared five ways;
    // the attack below should cost no more than that.
    let plain = load(&client, &url, None, None, || victim_median(&client, &url)).await;
    println!(
        "victim beside {ATTACKERS} plain clients: {:.3} s ({:.2}x alone)",
        plain.0.as_secs_f64(),
        plain.0.as_secs_f64() / alone.as_secs_f64()
    );

    // 16 distinct stop strings of 128 bytes that never match the output.
    let stops: Vec<String> = (0..16)
        .map(|i| format!("{}{}", char::from(b'A' + i as u8), "\u{1}".repeat(127)))
        .collect();
    // 4 MB: under the default 4 MiB body limit, so it is read, parsed and validated.
    let huge_prompt = "a".repeat(4_000_000);
    let (attacked, refused) = load(
        &client,
        &url,
        Some(stops),
        Some(huge_prompt.clone()),
        || victim_median(&client, &url),
    )
    .await;
    println!(
        "victim under {ATTACKERS} attackers: {:.3} s ({:.2}x alone, {:.2}x beside plain clients; \
         {refused} 4 MB prompts refused meanwhile)",
        attacked.as_secs_f64(),
        attacked.as_secs_f64() / alone.as_secs_f64(),
        attacked.as_secs_f64() / plain.0.as_secs_f64()
    );

    let before = pid.and_then(rss_kib);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (status, time) = completion(&client, &url, &json!({"prompt": huge_prompt})).await;
        assert_eq!(status, 400);
        slowest = slowest.max(time);
    }
    let after = pid.and_then(rss_kib);
    println!(
        "4 MB prompt refused: slowest of 20 in {:.1} ms (client send included)",
        slowest.as_secs_f64() * 1e3
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "server RSS: {before} KiB before, {after} KiB after 20 refusals ({:+} KiB)",
            after as i64 - before as i64
        );
    }
}
