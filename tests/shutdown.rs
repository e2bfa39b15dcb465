//! `waypoint serve` as a process under SIGTERM and SIGINT: the drain always ends, even with
//! clients that hold half a request or stop reading, and a second signal exits at once.
//!
//! The server's timeouts are set to a second and the assertions allow far more: these tests
//! check that shutdown ends, never how fast.

#[path = "common/process.rs"]
mod process;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use process::ServerProcess;

/// Far longer than any step of the shutdown should take.
const BOUND: Duration = Duration::from_secs(30);

/// A streamed completion long enough to outlast the test, whose client never reads it.
fn unread_stream(address: &str) -> TcpStream {
    let body = r#"{"prompt": "a stream nobody reads", "max_tokens": 1900, "ignore_eos": true, "stream": true, "logprobs": 5}"#;
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[test]
fn sigterm_ends_the_process_despite_half_requests_and_a_reader_that_stopped() {
    let mut server = ServerProcess::start(
        &["--shutdown-timeout", "1", "--header-read-timeout", "600"],
        &[],
    );
    let address = server.address().to_string();
    let mut half_head = TcpStream::connect(&address).unwrap();
    half_head.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    let mut half_body = TcpStream::connect(&address).unwrap();
    half_body
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"prompt\": ",
        )
        .unwrap();
    let _unread = unread_stream(&address);
    std::thread::sleep(Duration::from_millis(300));

    server.signal("TERM");
    let status = server
        .exited_within(BOUND)
        .unwrap_or_else(|| panic!("still running:\n{}", server.stderr().join("\n")));
    assert_eq!(status.code(), Some(0), "{}", server.stderr().join("\n"));
    let log = server.stderr().join("\n");
    assert!(log.contains("waypoint stopped"), "{log}");
}

#[test]
fn a_second_signal_exits_at_once_and_non_zero() {
    // A drain that would take ten minutes: a request whose body never finishes arriving
    // stays in flight.
    let mut server = ServerProcess::start(
        &["--shutdown-timeout", "600", "--body-read-timeout", "3600"],
        &[],
    );
    let mut half_body = TcpStream::connect(server.address()).unwrap();
    half_body
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"prompt\": ",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.signal("INT");
    // Still draining: the first signal does not end the process by itself.
    assert!(
        server.exited_within(Duration::from_millis(500)).is_none(),
        "exited before the drain ended:\n{}",
        server.stderr().join("\n")
    );
    server.signal("TERM");
    let status = server
        .exited_within(BOUND)
        .expect("the second signal did not end the process");
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "{}",
        server.stderr().join("\n")
    );
}
