//! Chat templates: the Jinja program a model ships to turn a conversation into its prompt.
//!
//! Templates are written for Hugging Face transformers, which renders them with Python's
//! Jinja2 in a particular environment; to produce the same prompt we mirror that environment
//! with minijinja: `trim_blocks` and `lstrip_blocks` on, Python string and dict methods
//! (`.strip()`, `.items()`) through minijinja-contrib's pycompat callback, a
//! `raise_exception` function, and a `tojson` filter that writes JSON the way Python's
//! `json.dumps` does (", " and ": " separators, non-ASCII kept as is).

use std::fmt;

use minijinja::value::{Kwargs, Value};
use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

const TEMPLATE_NAME: &str = "chat_template";

/// The widest `tojson(indent=...)` honoured.
const MAX_JSON_INDENT: usize = 64;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...: whatever the template understands.
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `template`; `bos_token` and `eos_token` are the strings templates see as
    /// `bos_token` and `eos_token` (empty when `None`). A syntax error is
    /// [`TokenizerError::TemplateSyntax`].
    pub fn new(
        template: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, template.to_string())
            .map_err(TokenizerError::TemplateSyntax)?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`; with `add_generation_prompt` it ends with the opening of an
    /// assistant turn, ready for the model to continue.
    ///
    /// A template that calls `raise_exception` (to reject, say, two user turns in a row)
    /// yields [`TokenizerError::TemplateException`]; any other failure
    /// [`TokenizerError::TemplateRender`].
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TokenizerError::TemplateRender)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_deref().unwrap_or(""),
                eos_token => self.eos_token.as_deref().unwrap_or(""),
            })
            .map_err(render_error)
    }
}

/// Marks errors that come from the template's own `raise_exception` call.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(RaisedException(message)),
    )
}

fn render_error(err: minijinja::Error) -> TokenizerError {
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(raised) = cause.downcast_ref::<RaisedException>() {
            return TokenizerError::TemplateException(raised.0.clone());
        }
        source = cause.source();
    }
    TokenizerError::TemplateRender(err)
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None)`, with
/// Jinja2's positional `indent` accepted too. minijinja's own `tojson` escapes `<`, `>`, `&`
/// and `'` for HTML and drops the spaces after separators, which would change the prompt.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(indent) if indent.is_none() || indent.is_undefined() => None,
        Some(indent) => Some(match indent.as_str() {
            Some(text) => text.to_string(),
            None => {
                let width = i64::try_from(indent.clone()).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson: indent must be an integer or a string, not {indent}"),
                    )
                })?;
                // Clamped so that a template cannot ask for a gigabyte of spaces.
                " ".repeat(usize::try_from(width).unwrap_or(0).min(MAX_JSON_INDENT))
            }
        }),
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let separators = kwargs.get::<Option<Vec<String>>>("separators")?;
    kwargs.assert_all_used()?;
    let (item_separator, key_separator) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(other) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "tojson: separators must be two strings, got {}",
                    other.len()
                ),
            ))
        }
        // Python's defaults: no trailing space before a newline when indenting.
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = Vec::new();
    let formatter = PythonJsonFormatter {
        indent: indent.as_deref(),
        item_separator: &item_separator,
        key_separator: &key_separator,
        ensure_ascii,
        depth: 0,
        has_value: false,
    };
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut serializer).map_err(|err| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: cannot serialize value",
        )
        .with_source(err)
    })?;
    // serde_json writes only valid UTF-8.
    Ok(Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Writes JSON byte-for-byte like Python's `json.dumps`.
struct PythonJsonFormatter<'a> {
    indent: Option<&'a str>,
    item_separator: &'a str,
    key_separator: &'a str,
    ensure_ascii: bool,
    depth: usize,
    has_value: bool,
}

impl PythonJsonFormatter<'_> {
    fn newline<W: ?Sized + std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        if let Some(indent) = self.indent {
            writer.write_all(b"\n")?;
            for _ in 0..self.depth {
                writer.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        bracket: &[u8],
    ) -> std::io::Result<()> {
        self.depth -= 1;
        // Empty containers stay on one line, as in Python.
        if self.has_value {
            self.newline(writer)?;
        }
        writer.write_all(bracket)
    }

    fn element<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            writer.write_all(self.item_separator.as_bytes())?;
        }
        self.newline(writer)
    }
}

impl serde_json::ser::Formatter for PythonJsonFormatter<'_> {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.element(writer, first)
    }

    fn end_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.element(writer, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(self.key_separator.as_bytes())
    }

    fn end_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if !self.ensure_ascii {
            return writer.write_all(fragment.as_bytes());
        }
        for c in fragment.chars() {
            if c.is_ascii() {
                writer.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn renders_messages_and_generation_prompt() {
        let messages = [ChatMessage::new("user", "Hi")];
        let template = chatml();
        assert_eq!(
            template.render(&messages, true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            template.render(&messages, false).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn trims_blocks_like_transformers() {
        let template = ChatTemplate::new(
            "{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let messages = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        assert_eq!(template.render(&messages, false).unwrap(), "[a]\n[b]\n");
    }

    #[test]
    fn python_methods_and_special_tokens() {
        let template = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m['content'].strip().upper() }}\
             {% if m.content.startswith(' ') %}!{% endif %}{% endfor %}{{ eos_token }}",
            Some("<s>".to_string()),
            Some("</s>".to_string()),
        )
        .unwrap();
        let messages = [ChatMessage::new("user", "  hi  ")];
        assert_eq!(template.render(&messages, false).unwrap(), "<s>HI!</s>");
    }

    #[test]
    fn tojson_matches_python() {
        let render = |source: &str| {
            ChatTemplate::new(source, None, None)
                .unwrap()
                .render(&[ChatMessage::new("user", "a<b> & 'é'")], false)
                .unwrap()
        };
        assert_eq!(
            render("{{ messages[0] | tojson }}"),
            r#"{"role": "user", "content": "a<b> & 'é'"}"#
        );
        assert_eq!(
            render("{{ messages | tojson(indent=2) }}"),
            "[\n  {\n    \"role\": \"user\",\n    \"content\": \"a<b> & 'é'\"\n  }\n]"
        );
        assert_eq!(
            render("{{ messages[0].content | tojson(ensure_ascii=true) }}"),
            r#""a<b> & '\u00e9'""#
        );
        assert_eq!(
            render("{{ {'a': [1, 2.5, none, true], 'b': {}} | tojson(separators=(',', ':')) }}"),
            r#"{"a":[1,2.5,null,true],"b":{}}"#
        );
    }

    #[test]
    fn raise_exception_is_a_typed_error() {
        let template = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('System message first!') }}{% endif %}",
            None,
            None,
        )
        .unwrap();
        let err = template
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap_err();
        match &err {
            TokenizerError::TemplateException(message) => {
                assert_eq!(message, "System message first!")
            }
            other => panic!("expected TemplateException, got {other:?}"),
        }
        assert!(err.to_string().contains("System message first!"));
    }

    #[test]
    fn syntax_and_runtime_errors_are_typed() {
        let err =
            ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateSyntax(_)), "{err:?}");
        assert!(err.to_string().contains("does not compile"), "{err}");

        let template = ChatTemplate::new("{{ messages[0].content | no_such_filter }}", None, None);
        let err = match template {
            Ok(template) => template
                .render(&[ChatMessage::new("user", "x")], false)
                .unwrap_err(),
            Err(err) => err,
        };
        assert!(
            matches!(
                err,
                TokenizerError::TemplateRender(_) | TokenizerError::TemplateSyntax(_)
            ),
            "{err:?}"
        );

        let template = ChatTemplate::new("{{ messages[0].content + 1 }}", None, None).unwrap();
        let err = template
            .render(&[ChatMessage::new("user", "x")], false)
            .unwrap_err();
        assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err:?}");
    }

    #[test]
    fn chat_message_json_shape() {
        let message: ChatMessage =
            serde_json::from_str(r#"{"role": "user", "content": "Hi"}"#).unwrap();
        assert_eq!(message, ChatMessage::new("user", "Hi"));
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"role":"user","content":"Hi"}"#
        );
    }
}
