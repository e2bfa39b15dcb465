//! RSS soak for a running `waypoint serve` (`docs/BENCHMARKS.md`): sends short completions
//! from 8 concurrent clients and prints the server's RSS after every 10,000 requests.
//!
//! ```sh
//! cargo run --release --example soak -- http://127.0.0.1:8000 SERVER_PID 50000
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

const CLIENTS: usize = 8;
const REPORT_EVERY: usize = 10_000;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().expect("usage: soak URL PID [TOTAL]");
    let pid: u32 = args.next().expect("the server's pid").parse().unwrap();
    let total: usize = args.next().map_or(50_000, |n| n.parse().unwrap());
    let url = format!("{base}/v1/completions");
    let client = reqwest::Client::new();
    let sent = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    println!("requests,rss_kib,elapsed_s");
    println!("0,{},0", rss_kib(pid));
    let mut next_report = REPORT_EVERY;
    while next_report <= total {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|worker| {
                let client = client.clone();
                let url = url.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    while sent.fetch_add(1, Ordering::Relaxed) < next_report {
                        let n = sent.load(Ordering::Relaxed);
                        // Distinct prompts, so the prefix cache sees new blocks too.
                        let body = json!({"prompt": format!("soak {worker} {n} once upon a time"),
                                          "max_tokens": 4, "ignore_eos": true,
                                          "stream": n.is_multiple_of(2)});
                        let response = client.post(&url).json(&body).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        let _ = response.bytes().await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        sent.store(next_report, Ordering::Relaxed);
        println!(
            "{next_report},{},{:.1}",
            rss_kib(pid),
            started.elapsed().as_secs_f64()
        );
        next_report += REPORT_EVERY;
    }
}
