//! Server-sent events as OpenAI-compatible servers stream completions: `data: {json}` events
//! separated by blank lines, ending with `data: [DONE]`.

use serde_json::Value;

/// One line of an SSE stream, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseLine<'a> {
    /// A `data` field and its value.
    Data(&'a str),
    /// An empty line, which ends the current event.
    Blank,
    /// A comment (`: ping`) or a field the benchmark has no use for (`event`, `id`, `retry`).
    Ignored,
}

/// Classifies one line (without its line terminator; a trailing `\r` is tolerated).
///
/// As the SSE spec says, a single space after the colon is not part of the value, and a line
/// without a colon is a field name with an empty value.
pub fn parse_sse_line(line: &str) -> SseLine<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return SseLine::Blank;
    }
    if line.starts_with(':') {
        return SseLine::Ignored;
    }
    let (field, value) = match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    if field == "data" {
        SseLine::Data(value)
    } else {
        SseLine::Ignored
    }
}

/// Reassembles SSE events from a byte stream that network reads cut at arbitrary points.
///
/// Lines end with `\n` or `\r\n`; a lone `\r` as line terminator (allowed by the spec, used by
/// no server we know) is not recognised, because telling it from the first half of a `\r\n`
/// split across two reads would need a look-ahead.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of a line whose end has not arrived yet; kept as bytes because a read may also
    /// split a multi-byte UTF-8 character.
    partial: Vec<u8>,
    /// The data of the event being assembled; `None` until a `data` line arrives.
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data of every event they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(newline);
            rest = &tail[1..];
            if self.partial.is_empty() {
                self.line(head, &mut events);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                self.line(&line, &mut events);
            }
        }
        self.partial.extend_from_slice(rest);
        events
    }

    /// Ends the stream: returns the data of an event the server did not terminate with a blank
    /// line. The spec says to drop it, but a server that closes right after `data: [DONE]\n`
    /// did finish its answer, so the benchmark accepts it.
    pub fn finish(mut self) -> Option<String> {
        let line = std::mem::take(&mut self.partial);
        if !line.is_empty() {
            // A non-empty line cannot complete an event, so nothing lands in `completed`.
            let mut completed = Vec::new();
            self.line(&line, &mut completed);
        }
        self.data.take()
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<String>) {
        let line = String::from_utf8_lossy(line);
        match parse_sse_line(&line) {
            SseLine::Data(value) => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            SseLine::Blank => events.extend(self.data.take()),
            SseLine::Ignored => {}
        }
    }
}

/// What one event of a completion stream means to the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// `[DONE]`: the server finished the response.
    Done,
    /// A JSON chunk.
    Chunk {
        /// Whether the chunk delivers generated output (see [`parse_event`]).
        token: bool,
        /// `usage.completion_tokens`, when the chunk carries usage.
        completion_tokens: Option<u64>,
    },
    /// The server reported an error inside the stream, or sent something that is not JSON.
    Error(String),
}

/// Interprets the data of one event of a `/v1/completions` stream.
///
/// A chunk delivers output when one of its choices has non-empty `text`, or has empty text
/// and no `finish_reason`: a token that detokenized to nothing yet (a special token, half of a
/// multi-byte character) still is a token, while an empty choice that only carries the finish
/// reason is the server closing the sequence, and counting it would add a spurious ITL sample.
/// Usage-only chunks (`"choices": []`) deliver no output.
pub fn parse_event(data: &str) -> StreamEvent {
    let data = data.trim();
    if data == "[DONE]" {
        return StreamEvent::Done;
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(value) => value,
        Err(e) => return StreamEvent::Error(format!("stream event is not JSON ({e}): {data}")),
    };
    if let Some(message) = error_message(&value) {
        return StreamEvent::Error(message);
    }
    let token = value
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|choices| {
            choices.iter().any(|choice| {
                let text = choice.get("text").and_then(Value::as_str).unwrap_or("");
                let finished = choice.get("finish_reason").is_some_and(|r| !r.is_null());
                !text.is_empty() || !finished
            })
        });
    let completion_tokens = value
        .get("usage")
        .and_then(|usage| usage.get("completion_tokens"))
        .and_then(Value::as_u64);
    StreamEvent::Chunk {
        token,
        completion_tokens,
    }
}

/// The message of an OpenAI-style error body (`{"error": {"message": ...}}`, `{"error": "..."}`)
/// or a vLLM-style one (`{"object": "error", "message": ...}`); `None` if `value` is no error.
pub fn error_message(value: &Value) -> Option<String> {
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let message = match error {
            Value::String(s) => s.clone(),
            other => other
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| other.to_string()),
        };
        return Some(message);
    }
    if value.get("object").and_then(Value::as_str) == Some("error") {
        let message = value.get("message").and_then(Value::as_str);
        return Some(message.map_or_else(|| value.to_string(), str::to_string));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_classified_like_the_sse_spec() {
        assert_eq!(
            parse_sse_line("data: {\"a\":1}"),
            SseLine::Data("{\"a\":1}")
        );
        assert_eq!(parse_sse_line("data:{\"a\":1}"), SseLine::Data("{\"a\":1}"));
        // Only one leading space belongs to the syntax.
        assert_eq!(parse_sse_line("data:  x"), SseLine::Data(" x"));
        assert_eq!(parse_sse_line("data: [DONE]\r"), SseLine::Data("[DONE]"));
        assert_eq!(parse_sse_line("data"), SseLine::Data(""));
        assert_eq!(parse_sse_line(""), SseLine::Blank);
        assert_eq!(parse_sse_line("\r"), SseLine::Blank);
        assert_eq!(parse_sse_line(": ping"), SseLine::Ignored);
        assert_eq!(parse_sse_line("event: message"), SseLine::Ignored);
        assert_eq!(parse_sse_line("id: 7"), SseLine::Ignored);
    }

    #[test]
    fn decoder_reassembles_events_split_anywhere() {
        let stream =
            "data: {\"x\":\"é\"}\r\n\r\n: ping\n\nevent: e\ndata: a\ndata: b\n\ndata: [DONE]\n\n";
        let whole = SseDecoder::default().push(stream.as_bytes());
        assert_eq!(whole, vec!["{\"x\":\"é\"}", "a\nb", "[DONE]"]);
        // Every split point, including inside the two-byte `é` and between `\r` and `\n`.
        for cut in 0..=stream.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.push(&stream.as_bytes()[..cut]);
            events.extend(decoder.push(&stream.as_bytes()[cut..]));
            assert_eq!(decoder.finish(), None, "cut at {cut}");
            assert_eq!(events, whole, "cut at {cut}");
        }
    }

    #[test]
    fn decoder_finish_returns_an_unterminated_event() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: [DONE]\n").is_empty());
        assert_eq!(decoder.finish().as_deref(), Some("[DONE]"));

        let mut decoder = SseDecoder::default();
        assert!(decoder.push(b"data: [DO").is_empty());
        assert_eq!(decoder.finish().as_deref(), Some("[DO"));

        assert_eq!(SseDecoder::default().finish(), None);
    }

    #[test]
    fn events_are_interpreted() {
        assert_eq!(parse_event("[DONE]"), StreamEvent::Done);
        let chunk = |token, completion_tokens| StreamEvent::Chunk {
            token,
            completion_tokens,
        };
        assert_eq!(
            parse_event(r#"{"choices":[{"index":0,"text":"hi","finish_reason":null}]}"#),
            chunk(true, None)
        );
        // A token whose text is still held back by the detokenizer.
        assert_eq!(
            parse_event(r#"{"choices":[{"index":0,"text":"","finish_reason":null}]}"#),
            chunk(true, None)
        );
        // The last token arrives together with the finish reason.
        assert_eq!(
            parse_event(r#"{"choices":[{"text":"!","finish_reason":"length"}],"usage":null}"#),
            chunk(true, None)
        );
        // A bare finish marker is not a token.
        assert_eq!(
            parse_event(r#"{"choices":[{"text":"","finish_reason":"stop"}]}"#),
            chunk(false, None)
        );
        assert_eq!(
            parse_event(r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3}}"#),
            chunk(false, Some(3))
        );
        assert_eq!(
            parse_event(r#"{"error":{"message":"out of blocks","code":500}}"#),
            StreamEvent::Error("out of blocks".to_string())
        );
        assert_eq!(
            parse_event(r#"{"error":"boom"}"#),
            StreamEvent::Error("boom".to_string())
        );
        assert_eq!(
            parse_event(r#"{"object":"error","message":"bad model"}"#),
            StreamEvent::Error("bad model".to_string())
        );
        assert!(
            matches!(parse_event("{not json"), StreamEvent::Error(m) if m.contains("not JSON"))
        );
    }
}
