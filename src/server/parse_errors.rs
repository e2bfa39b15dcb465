//! The JSON error for requests that hyper refuses before any of our code runs.
//!
//! A request line or header hyper cannot parse, a URI or header block over its limits: hyper
//! answers these itself (400, 414 or 431) with an empty body and closes the connection, and
//! offers no hook to say more. [`ExplainParseErrors`] wraps the connection's stream and
//! replaces exactly that answer with the OpenAI-shaped JSON error every other refusal gets.
//!
//! What it recognises is narrow on purpose: a write that is one whole response head, whose
//! status is one of hyper's three automatic ones, and whose headers are exactly the
//! `connection: close`, `content-length: 0` and `date` hyper writes. Every response of ours
//! carries a `content-type`, so none of them can match, and since the connection closes
//! after hyper's answer, adding a body cannot confuse the framing of a next request.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ErrorDetail, ErrorResponse};

/// A connection's stream whose hyper-made parse-error answers carry a JSON body.
pub struct ExplainParseErrors<S> {
    inner: S,
    /// The replacement answer, and how much of it is written: drained before anything else.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> ExplainParseErrors<S> {
    /// Wraps `inner`; nothing changes until hyper writes one of its own error answers.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> ExplainParseErrors<S> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `head` as written when it is hyper's own error answer, queueing ours instead.
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let replacement = explained(head)?;
        self.pending = Some((replacement, 0));
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            // What is not written yet goes out on the next write, flush or shutdown.
            _ => Poll::Ready(Ok(head.len())),
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ExplainParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ExplainParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(written) = self.replace(cx, buf) {
            return written;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper queues a response head as its own slice, first.
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) {
            if let Some(written) = self.replace(cx, first) {
                return written;
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Our answer in place of `head`, when `head` is exactly one of hyper's parse-error answers.
fn explained(head: &[u8]) -> Option<Vec<u8>> {
    // Every other response is let through by this first test or the next.
    let rest = head.strip_prefix(b"HTTP/1.1 4")?;
    let head = std::str::from_utf8(head).ok()?;
    let lines = head.strip_suffix("\r\n\r\n")?;
    let mut lines = lines.split("\r\n");
    let status_line = lines.next()?;
    let (code, message) = match rest.get(..2)? {
        b"00" => (
            "malformed_request",
            "the request line or a header could not be parsed as HTTP/1.1",
        ),
        b"14" => (
            "uri_too_long",
            "the request URI is longer than the server accepts",
        ),
        b"31" => (
            "headers_too_large",
            "the request headers are larger than the server accepts",
        ),
        _ => return None,
    };
    let mut header_names: Vec<&str> = lines
        .map(|line| line.split_once(':').map_or(line, |(name, _)| name))
        .collect();
    header_names.sort_unstable();
    if header_names != ["connection", "content-length", "date"]
        || !head.contains("\r\nconnection: close\r\n")
        || !head.contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let body = serde_json::to_vec(&ErrorResponse {
        error: ErrorDetail {
            message: message.to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some(code),
        },
    })
    .ok()?;
    let date = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("date: "))?;
    let mut answer = format!(
        "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ndate: {date}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
        content-length: 0\r\ndate: Mon, 07 Dec 2026 02:29:51 GMT\r\n\r\n";

    fn body_of(answer: &[u8]) -> serde_json::Value {
        let answer = std::str::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .split("\r\n")
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len(), "{answer}");
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn hypers_three_answers_get_a_json_body_and_keep_their_status() {
        for (status, code) in [
            ("400 Bad Request", "malformed_request"),
            ("414 URI Too Long", "uri_too_long"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let head = String::from_utf8(HYPER_400.to_vec())
                .unwrap()
                .replace("400 Bad Request", status);
            let answer = explained(head.as_bytes()).unwrap();
            let text = String::from_utf8(answer.clone()).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{text}"
            );
            assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
            assert!(text.contains("\r\ndate: Mon, 07 Dec 2026 02:29:51 GMT\r\n"));
            let body = body_of(&answer);
            assert_eq!(body["error"]["code"], code);
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn every_other_response_passes_untouched() {
        let ours = [
            // Our own errors carry a content type and a body.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
               content-length: 12\r\ndate: x\r\n\r\n"[..],
            // A head followed by anything is not hyper's bodiless answer.
            &[HYPER_400, b"{}"].concat(),
            // Keep-alive: hyper's answers always close.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
            b"data: {\"HTTP/1.1 400\"}\n\n",
            b"HTTP/1.1 4",
        ];
        for response in ours {
            assert_eq!(
                explained(response),
                None,
                "{:?}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[tokio::test]
    async fn the_stream_writes_the_replacement_even_one_byte_at_a_time() {
        let (client, server) = tokio::io::duplex(1);
        let mut server = ExplainParseErrors::new(server);
        let writer = tokio::spawn(async move {
            server.write_all(HYPER_400).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut answer = Vec::new();
        let mut client = client;
        client.read_to_end(&mut answer).await.unwrap();
        writer.await.unwrap();
        assert_eq!(body_of(&answer)["error"]["code"], "malformed_request");
    }
}
