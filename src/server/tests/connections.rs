//! Connection limits and the shutdown sequence, over raw TCP against the fake engine.
//!
//! Timeouts in the server are set to a second or two and the assertions allow ten times
//! that: these tests check what happens, never how fast.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{error_of, fake_engine, FakeEngine, MODEL};
use crate::server::{serve_connections, AppState, ConnectionConfig, ServerConfig};

/// Generous bound for anything the server should do within a second or two.
const SOON: Duration = Duration::from_secs(10);

struct Harness {
    address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
    engine: FakeEngine,
}

/// Timeouts long enough never to fire unless a test shortens them.
fn patient() -> ConnectionConfig {
    ConnectionConfig {
        header_read_timeout: Duration::from_secs(600),
        max_connections: 64,
        shutdown_timeout: Duration::from_secs(600),
        close_timeout: Duration::from_secs(1),
        ..ConnectionConfig::default()
    }
}

/// [`patient`], but in-flight requests get one second once shutdown begins.
fn patient_with_a_short_drain() -> ConnectionConfig {
    ConnectionConfig {
        shutdown_timeout: Duration::from_secs(1),
        ..patient()
    }
}

async fn harness(connections: ConnectionConfig, config: ServerConfig) -> Harness {
    let engine = fake_engine(16);
    let state = AppState::new(engine.handle.clone(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve_connections(
        listener,
        std::future::ready(Some(state)),
        async {
            let _ = stopped.await;
        },
        connections,
    ));
    Harness {
        address,
        stop: Some(stop),
        served,
        engine,
    }
}

impl Harness {
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.address).await.unwrap()
    }

    /// Starts the shutdown (the first signal).
    fn shut_down(&mut self) {
        let _ = self.stop.take().unwrap().send(());
    }

    /// Waits for serving to end; panics if it does not within `bound`.
    async fn stopped_within(self, bound: Duration) {
        tokio::time::timeout(bound, self.served)
            .await
            .expect("serving did not end")
            .unwrap()
            .unwrap();
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }
}

/// Reads one response with a `Content-Length` body (all of the server's JSON answers).
async fn read_response(stream: &mut TcpStream) -> Raw {
    let read = async {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        let mut raw = Raw {
            status,
            head,
            body: buffer[head_end..].to_vec(),
        };
        let length: usize = raw
            .header("content-length")
            .map_or(0, |value| value.parse().unwrap());
        while raw.body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            raw.body.extend_from_slice(&chunk[..n]);
        }
        raw
    };
    tokio::time::timeout(SOON, read).await.expect("no response")
}

/// Whether the server closes the connection within `bound` (reading and dropping anything
/// it sends first).
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    let drained = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, drained).await.is_ok()
}

fn post(path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n";

fn completion(prompt: &str, stream: bool) -> String {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": stream}).to_string()
}

#[tokio::test]
async fn half_sent_headers_are_cut_off_by_the_header_timeout() {
    let server = harness(
        ConnectionConfig {
            header_read_timeout: Duration::from_secs(1),
            ..patient()
        },
        ServerConfig::default(),
    )
    .await;
    let mut slow = server.connect().await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, SOON).await, "slowloris kept open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = harness(
        ConnectionConfig {
            header_read_timeout: Duration::from_secs(1),
            ..patient()
        },
        ServerConfig::default(),
    )
    .await;
    let mut idle = server.connect().await;
    idle.write_all(GET_HEALTH).await.unwrap();
    let response = read_response(&mut idle).await;
    assert_eq!(response.status, 200);
    assert!(!response.closes());
    assert!(closed_within(&mut idle, SOON).await, "idle connection kept");
}

#[tokio::test]
async fn a_half_closed_client_gets_its_answer() {
    let server = harness(patient(), ServerConfig::default()).await;
    let mut client = server.connect().await;
    client
        .write_all(&post("/v1/completions", &completion("hi", false), ""))
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200, "{:?}", response);
    assert_eq!(response.json()["choices"][0]["text"], "hi");
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let server = harness(
        patient(),
        ServerConfig {
            body_read_timeout: Duration::from_secs(1),
            body_min_rate: 1 << 30,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut client = server.connect().await;
    client
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"prompt\": ",
        )
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert_eq!(error_of(&response.json()).0, "request_timeout");
    assert!(response.closes(), "{response:?}");
    assert!(closed_within(&mut client, SOON).await);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_at_once_and_closes() {
    let server = harness(patient(), ServerConfig::default()).await;
    let mut client = server.connect().await;
    client
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000000\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(error_of(&response.json()).0, "request_too_large");
    assert!(response.closes(), "{response:?}");
    assert!(closed_within(&mut client, SOON).await);
}

#[tokio::test]
async fn a_401_that_leaves_the_body_unread_says_connection_close() {
    let server = harness(
        patient(),
        ServerConfig {
            api_key: Some("secret".to_string()),
            ..ServerConfig::default()
        },
    )
    .await;
    let mut client = server.connect().await;
    client
        .write_all(&post("/v1/completions", &completion("hi", false), ""))
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 401);
    assert!(response.closes(), "{response:?}");
    assert!(closed_within(&mut client, SOON).await);

    // Without a body there is nothing unread: the connection stays usable.
    let mut client = server.connect().await;
    client
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 401);
    assert!(!response.closes(), "{response:?}");
    client.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut client).await.status, 200);
}

#[tokio::test]
async fn keep_alive_works_after_a_404_or_405_with_a_body() {
    let server = harness(patient(), ServerConfig::default()).await;
    let mut client = server.connect().await;
    client
        .write_all(&post("/no/such/route", "{\"some\": \"body\"}", ""))
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 404);
    assert!(!response.closes(), "{response:?}");
    client
        .write_all(&post("/health", "{\"some\": \"body\"}", ""))
        .await
        .unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 405);
    assert!(!response.closes(), "{response:?}");
    client.write_all(GET_HEALTH).await.unwrap();
    let response = read_response(&mut client).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let server = harness(
        ConnectionConfig {
            max_connections: 1,
            ..patient()
        },
        ServerConfig::default(),
    )
    .await;
    let mut first = server.connect().await;
    first.write_all(GET_HEALTH).await.unwrap();
    assert_eq!(read_response(&mut first).await.status, 200);
    // The kernel completes the handshake, but the server does not take the connection.
    let mut second = server.connect().await;
    second.write_all(GET_HEALTH).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut byte)).await;
    assert!(early.is_err(), "served beyond --max-connections");
    drop(first);
    assert_eq!(read_response(&mut second).await.status, 200);
}

#[tokio::test]
async fn during_the_drain_health_is_503_and_new_work_is_refused_with_retry_after() {
    let mut server = harness(patient(), ServerConfig::default()).await;
    // A request in flight holds the drain open.
    let mut busy = server.connect().await;
    busy.write_all(&post("/v1/completions", &completion("HANG", false), ""))
        .await
        .unwrap();
    server.engine_wait_for_submits(1).await;
    server.shut_down();

    // The listener still accepts, so probes see the drain.
    let mut probe = server.connect().await;
    probe.write_all(GET_HEALTH).await.unwrap();
    let response = read_response(&mut probe).await;
    assert_eq!(response.status, 503);
    assert_eq!(response.json(), json!({"status": "shutting_down"}));
    assert!(response.closes(), "{response:?}");

    let mut late = server.connect().await;
    late.write_all(&post("/v1/completions", &completion("hi", false), ""))
        .await
        .unwrap();
    let response = read_response(&mut late).await;
    assert_eq!(response.status, 503);
    assert_eq!(error_of(&response.json()).0, "service_unavailable");
    assert_eq!(response.header("retry-after").as_deref(), Some("5"));
    assert!(response.closes());

    // The request in flight ends: nothing is left, and serving ends without waiting for
    // the shutdown timeout.
    server.engine.handle.abort_all();
    assert_eq!(read_response(&mut busy).await.status, 503);
    server.stopped_within(SOON).await;
}

#[tokio::test]
async fn after_the_shutdown_timeout_requests_are_aborted_with_an_error() {
    let mut server = harness(patient_with_a_short_drain(), ServerConfig::default()).await;
    let mut whole = server.connect().await;
    whole
        .write_all(&post("/v1/completions", &completion("HANG", false), ""))
        .await
        .unwrap();
    let mut streamed = server.connect().await;
    streamed
        .write_all(&post("/v1/completions", &completion("HANG", true), ""))
        .await
        .unwrap();
    server.engine_wait_for_submits(2).await;
    server.shut_down();

    let response = read_response(&mut whole).await;
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(error_of(&response.json()).0, "service_unavailable");

    let mut events = Vec::new();
    let _ = tokio::time::timeout(SOON, streamed.read_to_end(&mut events)).await;
    let events = String::from_utf8_lossy(&events);
    assert!(events.starts_with("HTTP/1.1 200"), "{events}");
    assert!(
        events.contains("\"type\":\"service_unavailable\""),
        "no error event: {events}"
    );
    assert!(events.contains("data: [DONE]"), "{events}");
    server.stopped_within(SOON).await;
}

#[tokio::test]
async fn shutdown_ends_with_a_client_holding_half_a_request() {
    let mut server = harness(
        patient_with_a_short_drain(),
        ServerConfig {
            body_read_timeout: Duration::from_secs(600),
            ..ServerConfig::default()
        },
    )
    .await;
    // Half the headers, and (on another connection) the headers and half the body.
    let mut half_head = server.connect().await;
    half_head
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let mut half_body = server.connect().await;
    half_body
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"prompt\": ",
        )
        .await
        .unwrap();
    // Let the server take both in.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shut_down();
    server.stopped_within(SOON).await;
    assert!(closed_within(&mut half_head, SOON).await);
    assert!(closed_within(&mut half_body, SOON).await);
}

#[tokio::test]
async fn shutdown_ends_with_a_client_that_stopped_reading_its_stream() {
    let mut server = harness(patient_with_a_short_drain(), ServerConfig::default()).await;
    let mut stuck = server.connect().await;
    stuck
        .write_all(&post("/v1/completions", &completion("FLOOD", true), ""))
        .await
        .unwrap();
    server.engine_wait_for_submits(1).await;
    // Never read: 20 MB of events cannot fit in the socket buffers, so the response is
    // stuck mid-write when the shutdown comes.
    server.shut_down();
    server.stopped_within(SOON).await;
    // The server dropped the connection rather than wait for the client.
    assert!(closed_within(&mut stuck, SOON).await);
}

impl Harness {
    async fn engine_wait_for_submits(&self, n: usize) {
        for _ in 0..1000 {
            if self.engine.record.lock().unwrap().submitted.len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine never got {n} requests");
    }
}

/// POSTs `body` as JSON and returns the status and the JSON answer.
async fn post_json(server: &Harness, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", server.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn work_that_cannot_fit_is_refused_before_it_is_done() {
    let server = harness(patient(), ServerConfig::default()).await;
    // The tiny tokenizer's longest entry is a special token of a dozen bytes.
    let limit = server
        .engine
        .handle
        .tokenizer()
        .max_text_bytes(super::MAX_CONTEXT);
    assert!(
        (super::MAX_CONTEXT..=super::MAX_CONTEXT * 16).contains(&limit),
        "{limit}"
    );
    let (status, body) = post_json(
        &server,
        "/v1/completions",
        json!({"prompt": "a".repeat(limit + 1)}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body).1.as_deref(), Some("prompt"));
    assert!(body["error"]["message"].as_str().unwrap().contains("bytes"));

    let long_chat = json!({"messages": [{"role": "user", "content": "b".repeat(limit)}]});
    let (status, body) = post_json(&server, "/v1/chat/completions", long_chat).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body).1.as_deref(), Some("messages"));

    let many: Vec<Value> = (0..=super::MAX_CONTEXT)
        .map(|_| json!({"role": "user", "content": ""}))
        .collect();
    let (status, body) =
        post_json(&server, "/v1/chat/completions", json!({"messages": many})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("messages"));

    // Nothing of these reached the engine.
    assert!(server.engine.record.lock().unwrap().submitted.is_empty());
}

#[tokio::test]
async fn stop_strings_are_bounded_per_string_and_in_total() {
    use crate::sampling::{MAX_STOP_BYTES, MAX_STOP_STRING_BYTES};
    let server = harness(patient(), ServerConfig::default()).await;
    let too_long = vec!["x".repeat(MAX_STOP_STRING_BYTES + 1)];
    let too_much =
        vec!["y".repeat(MAX_STOP_STRING_BYTES); MAX_STOP_BYTES / MAX_STOP_STRING_BYTES + 1];
    for stop in [too_long, too_much] {
        let (status, body) = post_json(
            &server,
            "/v1/completions",
            json!({"prompt": "hi", "stop": stop}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error_of(&body).1.as_deref(), Some("stop"));
    }
    let most = vec!["z".repeat(MAX_STOP_STRING_BYTES); MAX_STOP_BYTES / MAX_STOP_STRING_BYTES];
    let (status, body) = post_json(
        &server,
        "/v1/completions",
        json!({"prompt": "hi", "stop": most}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn requests_hyper_cannot_parse_get_a_json_error_and_a_close() {
    let server = harness(patient(), ServerConfig::default()).await;
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: test\r\n\r\n", "a".repeat(70_000));
    // hyper checks its limit between reads, which may take more than it: 300 KB is past
    // any read.
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(300_000)
    );
    // hyper refuses more than 100 headers.
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: test\r\n{}\r\n",
        "X-Many: 1\r\n".repeat(200)
    );
    for (request, status, code) in [
        (
            b"G@T / HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (long_uri.into_bytes(), 414, "uri_too_long"),
        (many_headers.into_bytes(), 431, "headers_too_large"),
        (big_header.into_bytes(), 431, "headers_too_large"),
    ] {
        let mut client = server.connect().await;
        // The server may answer and close before the whole request is sent.
        let _ = client.write_all(&request).await;
        let response = read_response(&mut client).await;
        assert_eq!(response.status, status, "{response:?}");
        assert!(response.closes(), "{response:?}");
        assert_eq!(
            response.header("content-type").as_deref(),
            Some("application/json")
        );
        let (kind, _) = error_of(&response.json());
        assert_eq!(kind, "invalid_request_error");
        assert_eq!(response.json()["error"]["code"], code);
        assert!(closed_within(&mut client, SOON).await);
    }
}
