//! Span fields for the JSON log layer, written straight into one JSON object.
//!
//! tracing-subscriber's `JsonFields` builds a map of owned values for every span and, when a
//! field is recorded after the span opened (the server layer records a new trace's id so),
//! parses the whole object back and writes it again. A sampled request opens one span and
//! records at most one field later: here that is one string written, and one appended to.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// The span field formatter of [`json_logs`](crate::init::json_logs): a JSON object per span.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonSpanFields;

impl<'w> FormatFields<'w> for JsonSpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut members = Members::default();
        fields.record(&mut members);
        members.result?;
        writer.write_char('{')?;
        writer.write_str(&members.out)?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut members = Members::default();
        fields.record(&mut members);
        members.result?;
        if members.out.is_empty() {
            return Ok(());
        }
        let object = &mut current.fields;
        // `{…}` from `format_fields`: the new members go before the closing brace.
        if object.ends_with('}') {
            object.pop();
            if object.len() > 1 {
                object.push(',');
            }
        } else {
            object.clear();
            object.push('{');
        }
        object.push_str(&members.out);
        object.push('}');
        Ok(())
    }
}

/// The members of a JSON object (`"name":value,…`), as fields are visited.
struct Members {
    out: String,
    result: fmt::Result,
}

impl Default for Members {
    fn default() -> Self {
        Self {
            out: String::new(),
            result: Ok(()),
        }
    }
}

impl Members {
    /// `"name":` (after a comma if a member precedes).
    fn key(&mut self, field: &Field) {
        if !self.out.is_empty() {
            self.out.push(',');
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        push_string(&mut self.out, name);
        self.out.push(':');
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.key(field);
        if self.result.is_ok() {
            self.result = self.out.write_fmt(value);
        }
    }
}

impl Visit for Members {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_string(&mut self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.out.push('"');
        if self.result.is_ok() {
            self.result = write!(Escaped(&mut self.out), "{value:?}");
        }
        self.out.push('"');
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            // JSON has no NaN or infinities.
            self.record_debug(field, &value);
        }
    }
}

/// `value` as a JSON string.
fn push_string(out: &mut String, value: &str) {
    out.push('"');
    let _ = Escaped(out).write_str(value);
    out.push('"');
}

/// Writes what it is given escaped for the inside of a JSON string.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 => "",
                _ => continue,
            };
            self.0.push_str(&text[plain..at]);
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.push_str(escape);
            }
            plain = at + 1;
        }
        self.0.push_str(&text[plain..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// The lines a `json_logs` layer writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `json_logs` writes while `logging` runs, parsed.
    fn logged(logging: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber =
            tracing_subscriber::registry().with(crate::init::json_logs(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, logging);
        lines.parsed()
    }

    impl Lines {
        fn parsed(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
                .collect()
        }
    }

    #[test]
    fn span_fields_are_one_json_object_whatever_their_text_and_however_recorded() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        let lines = logged(|| {
            let span = tracing::info_span!(
                "request",
                request_id = tricky,
                route = %format_args!("/{}", "products/{id}"),
                r#type = "server",
                attempt = 2_u64,
                delta = -1_i64,
                ratio = 0.5_f64,
                missing = f64::NAN,
                sampled = true,
                trace_id = tracing::field::Empty,
            );
            let _entered = span.enter();
            tracing::info!("before");
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            tracing::info!("after");
        });
        assert_eq!(lines.len(), 2);
        let before = &lines[0]["span"];
        assert_eq!(before["request_id"], tricky);
        assert_eq!(before["route"], "/products/{id}");
        assert_eq!(before["type"], "server");
        assert_eq!(before["attempt"], 2);
        assert_eq!(before["delta"], -1);
        assert_eq!(before["ratio"], 0.5);
        assert_eq!(before["missing"], "NaN");
        assert_eq!(before["sampled"], true);
        assert!(before.get("trace_id").is_none());
        let after = &lines[1]["span"];
        assert_eq!(after["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(after["request_id"], tricky);
    }

    #[test]
    fn a_span_without_fields_is_an_empty_object_until_one_is_recorded() {
        let lines = logged(|| {
            let span = tracing::info_span!("bare", later = tracing::field::Empty);
            let _entered = span.enter();
            tracing::info!("empty");
            span.record("later", 7_u64);
            tracing::info!("one");
        });
        assert_eq!(lines[0]["span"]["name"], "bare");
        assert_eq!(lines[1]["span"]["later"], 7);
    }
}
