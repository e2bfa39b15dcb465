//! HTTP: the model listing and one streamed completion request.

use std::error::Error;
use std::time::Instant;

use anyhow::{anyhow, Context};
use futures::StreamExt;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::metrics::{RequestOutcome, StreamRecorder};
use super::sse::{error_message, parse_event, SseDecoder};

/// How much of an error response body goes into the failure message.
const MAX_ERROR_BODY_CHARS: usize = 300;

/// The HTTP client for a run.
pub(super) fn client() -> anyhow::Result<Client> {
    Client::builder()
        // A benchmark measures the server, not a proxy that happens to be in the environment.
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// The id of the first model `GET {base_url}/v1/models` lists.
pub(super) async fn first_model(client: &Client, base_url: &str) -> anyhow::Result<String> {
    let url = format!("{base_url}/v1/models");
    let what = || format!("listing the models at {url} (pass --model to skip this)");
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow!("{}", error_chain(&e)).context(what()))?;
    let status = response.status();
    let body = response.text().await.with_context(what)?;
    if !status.is_success() {
        return Err(anyhow!("{}", http_error(status, &body)).context(what()));
    }
    let listing: Value = serde_json::from_str(&body)
        .with_context(|| format!("the answer is not JSON: {}", truncate(&body)))
        .with_context(what)?;
    listing
        .get("data")
        .and_then(Value::as_array)
        .and_then(|models| models.first())
        .and_then(|model| model.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the server lists no model: {}", truncate(&body)))
        .with_context(what)
}

/// The JSON body of one benchmark request.
///
/// `ignore_eos` makes every request generate exactly `max_tokens`, so runs compare equal work;
/// temperature 0 (greedy) keeps sampling cost minimal and the output reproducible, as vLLM's
/// benchmark does.
pub(super) fn request_body(model: &str, prompt: &[u32], max_tokens: usize) -> Vec<u8> {
    json!({
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": { "include_usage": true },
    })
    .to_string()
    .into_bytes()
}

/// Sends one prebuilt request to `url` and times its stream.
pub(super) async fn stream_completion(
    client: &Client,
    url: &str,
    body: Vec<u8>,
    input_tokens: u64,
) -> RequestOutcome {
    let sent = Instant::now();
    let response = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(http_error(status, &body));
    }

    let mut recorder = StreamRecorder::new(sent);
    let mut decoder = SseDecoder::default();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| format!("the stream broke off: {}", error_chain(&e)))?;
        let at = Instant::now();
        for data in decoder.push(&bytes) {
            recorder.record(at, parse_event(&data));
        }
        if recorder.is_finished() {
            // Everything after `[DONE]` is irrelevant; not waiting for the connection to close
            // keeps a lingering server from inflating the run's duration.
            return recorder.finish(input_tokens);
        }
    }
    if let Some(data) = decoder.finish() {
        recorder.record(Instant::now(), parse_event(&data));
    }
    recorder.finish(input_tokens)
}

/// A failure message for a non-2xx answer: the status and the server's error message.
fn http_error(status: StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|value| error_message(&value))
        .unwrap_or_else(|| truncate(body.trim()));
    if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    }
}

/// An error with its causes, since reqwest's own message leaves out the one that matters
/// ("error sending request" without "connection refused").
fn error_chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_BODY_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_body_asks_for_a_fixed_length_stream() {
        let body: Value = serde_json::from_slice(&request_body("m", &[5, 6, 7], 4)).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["prompt"], json!([5, 6, 7]));
        assert_eq!(body["max_tokens"], 4);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["temperature"], 0.0);
    }

    #[test]
    fn http_errors_carry_the_servers_message() {
        let status = StatusCode::BAD_REQUEST;
        assert_eq!(
            http_error(status, r#"{"error":{"message":"prompt too long"}}"#),
            "HTTP 400 Bad Request: prompt too long"
        );
        assert_eq!(
            http_error(status, "plain text\n"),
            "HTTP 400 Bad Request: plain text"
        );
        assert_eq!(http_error(status, ""), "HTTP 400 Bad Request");
        let long = "é".repeat(1000);
        assert_eq!(
            http_error(status, &long).chars().count(),
            "HTTP 400 Bad Request: ".len() + MAX_ERROR_BODY_CHARS + 3
        );
    }
}
