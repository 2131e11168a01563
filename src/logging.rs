//! Log set-up: `tracing` to stderr, as logfmt or JSON, in the shape Prometheus'
//! own logger (`promslog`, Go's `log/slog`) writes.
//!
//! Every line has `time` (RFC 3339, milliseconds, UTC), `level` (`DEBUG`, `INFO`,
//! `WARN`, `ERROR`, as slog spells them), `source` (`file.rs:line`) and `msg`,
//! then the event's own fields, flat. JSON keeps numbers and booleans as such, so
//! a `duration_seconds` field is a number of seconds; logfmt quotes a value only
//! when it has to (a space, `=`, `"`, a control character, or nothing at all), as
//! slog's text handler does. A log pipeline that reads Prometheus' lines reads
//! these unchanged.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber. Logs go to stderr; dependencies log at warn
/// and above unless the level is debug or trace.
pub fn init(level: LogLevel, format: LogFormat) {
    let level = level.as_tracing();
    let deps = if level >= tracing::Level::DEBUG {
        level
    } else {
        tracing::Level::WARN
    };
    // rustls logs every refused certificate at error level, once per try; the
    // exporter's own `refresh failed` line already says it (reason `tls`), so
    // the library speaks only at debug.
    let tls_library = if level >= tracing::Level::DEBUG {
        LevelFilter::from_level(level)
    } else {
        LevelFilter::OFF
    };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::from_level(deps))
        .with_target("rustls", tls_library)
        .with_target(env!("CARGO_CRATE_NAME"), LevelFilter::from_level(level));
    tracing_subscriber::registry()
        .with(filter)
        .with(PromLayer { format })
        .init();
}

/// The layer that writes each event as one line on stderr.
struct PromLayer {
    format: LogFormat,
}

impl<S: Subscriber> Layer<S> for PromLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // Events bridged from the `log` crate carry their origin as fields.
        let file = fields
            .log_file
            .as_deref()
            .or(meta.file())
            .map(|f| f.rsplit('/').next().unwrap_or(f));
        let line = fields.log_line.or(meta.line().map(u64::from));
        let source = match (file, line) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file.to_string(),
            _ => meta.target().to_string(),
        };
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let line = format_line(self.format, &time, *meta.level(), &source, &fields);
        // One write per line, so lines of two threads never interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// A field's value, as the event gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Text (and anything logged with `%` or `?`).
    Text(String),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A float (durations in seconds).
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// The message and the fields of one event, in the order they were given.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields {
    /// The event's message.
    pub message: String,
    /// Every other field.
    pub fields: Vec<(String, FieldValue)>,
    /// `log.file` of an event from the `log` crate.
    log_file: Option<String>,
    /// `log.line` of an event from the `log` crate.
    log_line: Option<u64>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: FieldValue) {
        match (field.name(), &value) {
            ("log.file", FieldValue::Text(file)) => {
                self.log_file = Some(file.clone());
                return;
            }
            ("log.line", FieldValue::Uint(line)) => {
                self.log_line = Some(*line);
                return;
            }
            ("log.target" | "log.module_path" | "log.file" | "log.line", _) => return,
            _ => {}
        }
        if field.name() == "message" {
            self.message = match value {
                FieldValue::Text(s) => s,
                other => format!("{other:?}"),
            };
        } else {
            self.fields.push((field.name().to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, FieldValue::Float(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, FieldValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, FieldValue::Uint(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, FieldValue::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, FieldValue::Text(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, FieldValue::Text(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%value` arrives here too, wrapped so that Debug prints its Display.
        self.push(field, FieldValue::Text(format!("{value:?}")));
    }
}

/// slog's spelling of a level.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// One log line, newline included.
pub fn format_line(
    format: LogFormat,
    time: &str,
    level: Level,
    source: &str,
    fields: &Fields,
) -> String {
    match format {
        LogFormat::Json => {
            // Written member by member (each key and value encoded by serde_json)
            // to keep promslog's order: time, level, source, msg, then the fields.
            let mut line = String::with_capacity(160);
            let mut member = |key: &str, value: serde_json::Value| {
                line.push(if line.is_empty() { '{' } else { ',' });
                line.push_str(&serde_json::Value::from(key).to_string());
                line.push(':');
                line.push_str(&value.to_string());
            };
            member("time", time.into());
            member("level", level_name(level).into());
            member("source", source.into());
            member("msg", fields.message.clone().into());
            for (key, value) in &fields.fields {
                let value = match value {
                    FieldValue::Text(s) => serde_json::Value::from(s.clone()),
                    FieldValue::Int(n) => (*n).into(),
                    FieldValue::Uint(n) => (*n).into(),
                    // JSON has no NaN or infinity: those become text.
                    FieldValue::Float(f) => serde_json::Number::from_f64(*f)
                        .map_or_else(|| f.to_string().into(), serde_json::Value::Number),
                    FieldValue::Bool(b) => (*b).into(),
                };
                member(key, value);
            }
            line.push_str("}\n");
            line
        }
        LogFormat::Logfmt => {
            let mut line = String::with_capacity(128);
            push_pair(&mut line, "time", time);
            push_pair(&mut line, "level", level_name(level));
            push_pair(&mut line, "source", source);
            push_pair(&mut line, "msg", &fields.message);
            for (key, value) in &fields.fields {
                let text = match value {
                    FieldValue::Text(s) => s.clone(),
                    FieldValue::Int(n) => n.to_string(),
                    FieldValue::Uint(n) => n.to_string(),
                    FieldValue::Float(f) => f.to_string(),
                    FieldValue::Bool(b) => b.to_string(),
                };
                push_pair(&mut line, key, &text);
            }
            line.push('\n');
            line
        }
    }
}

fn push_pair(line: &mut String, key: &str, value: &str) {
    if !line.is_empty() {
        line.push(' ');
    }
    line.push_str(key);
    line.push('=');
    let quote = value.is_empty()
        || value
            .chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control());
    if !quote {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:04x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            message: "refresh failed".into(),
            fields: vec![
                ("account".into(), FieldValue::Text("default".into())),
                ("duration_seconds".into(), FieldValue::Float(0.25)),
                ("pages".into(), FieldValue::Uint(3)),
                ("tls".into(), FieldValue::Bool(false)),
                ("error".into(), FieldValue::Text("said \"no\"\nthen".into())),
                ("empty".into(), FieldValue::Text(String::new())),
            ],
            ..Fields::default()
        }
    }

    #[test]
    fn json_is_flat_with_slog_keys_and_numbers() {
        let line = format_line(
            LogFormat::Json,
            "2026-01-02T03:04:05.678Z",
            Level::WARN,
            "schedule.rs:1",
            &fields(),
        );
        assert!(line.ends_with('\n') && line.lines().count() == 1);
        assert!(
            line.starts_with(r#"{"time":"2026-01-02T03:04:05.678Z","level":"WARN","source":"schedule.rs:1","msg":"refresh failed","account""#),
            "promslog's order: {line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-01-02T03:04:05.678Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["msg"], "refresh failed");
        assert_eq!(v["source"], "schedule.rs:1");
        assert_eq!(v["duration_seconds"], 0.25);
        assert_eq!(v["pages"], 3);
        assert_eq!(v["tls"], false);
        assert_eq!(v["error"], "said \"no\"\nthen");
    }

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let line = format_line(
            LogFormat::Logfmt,
            "2026-01-02T03:04:05.678Z",
            Level::INFO,
            "schedule.rs:1",
            &fields(),
        );
        assert_eq!(
            line,
            "time=2026-01-02T03:04:05.678Z level=INFO source=schedule.rs:1 msg=\"refresh failed\" \
             account=default duration_seconds=0.25 pages=3 tls=false error=\"said \\\"no\\\"\\nthen\" empty=\"\"\n"
        );
    }
}
