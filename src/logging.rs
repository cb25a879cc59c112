//! Runtime logs in runc's formats.
//!
//! containerd's shim passes `--log <bundle>/log.json --log-format json` and,
//! when a call fails, reads the file as JSON lines `{"level","msg","time"}`
//! and reports the last `"level":"error"` message. The text format mirrors
//! logrus' `time="…" level=… msg="…"`. Both are produced by one tracing layer
//! so every `tracing::error!` anywhere in the runtime lands in the format the
//! caller asked for.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

use crate::cli::LogFormat;

enum Sink {
    Stderr,
    File(File),
}

/// The layer: formats one event per line into the sink.
pub struct RuncLogLayer {
    format: LogFormat,
    sink: Mutex<Sink>,
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// Quote like logrus' text formatter: bare when safe, else Go-quoted.
fn logfmt_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/@^+".contains(c))
    {
        v.to_string()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}

impl RuncLogLayer {
    fn render(&self, level: &Level, fields: &Fields) -> String {
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level_name(level).into());
                obj.insert("msg".into(), fields.msg.clone().into());
                obj.insert("time".into(), time.into());
                for (k, v) in &fields.extra {
                    obj.insert(k.clone(), v.clone().into());
                }
                let mut line = serde_json::Value::Object(obj).to_string();
                line.push('\n');
                line
            }
            LogFormat::Text => {
                let mut line = format!(
                    "time={} level={} msg={}",
                    logfmt_value(&time),
                    level_name(level),
                    logfmt_value(&fields.msg)
                );
                for (k, v) in &fields.extra {
                    let _ = write!(line, " {k}={}", logfmt_value(v));
                }
                line.push('\n');
                line
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for RuncLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = self.render(event.metadata().level(), &fields);
        if let Ok(mut sink) = self.sink.lock() {
            let _ = match &mut *sink {
                Sink::Stderr => io::stderr().write_all(line.as_bytes()),
                Sink::File(f) => f.write_all(line.as_bytes()),
            };
        }
    }
}

/// Where the logs go; needed by `main` to decide whether an error must also
/// be printed plainly to stderr (runc's `fatal` does the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File,
}

/// Install the global subscriber. `--debug` lowers the level to debug;
/// `CNTRLIVE_LOG=trace` (an env filter) overrides both.
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> Result<Destination> {
    let (sink, dest) = match log {
        Some(path) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("failed to open log file {}", path.display()))?;
            (Sink::File(f), Destination::File)
        }
        None => (Sink::Stderr, Destination::Stderr),
    };
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let filter = match std::env::var("CNTRLIVE_LOG") {
        Ok(spec) if !spec.is_empty() => tracing_subscriber::EnvFilter::new(spec),
        // libcgroups warns about every v1 controller this kernel lacks, on
        // every call; that is noise in the shim's log.json.
        _ => tracing_subscriber::EnvFilter::default()
            .add_directive(level.into())
            .add_directive("libcgroups=error".parse().expect("static directive")),
    };
    let layer = RuncLogLayer {
        format,
        sink: Mutex::new(sink),
    };
    let subscriber = Registry::default().with(filter).with(layer);
    tracing::subscriber::set_global_default(subscriber)
        .context("failed to install the log subscriber")?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(format: LogFormat) -> RuncLogLayer {
        RuncLogLayer {
            format,
            sink: Mutex::new(Sink::Stderr),
        }
    }

    #[test]
    fn json_line_has_containerd_fields_ok() {
        let f = Fields {
            msg: "container \"x\" does not exist".into(),
            extra: vec![],
        };
        let line = layer(LogFormat::Json).render(&Level::ERROR, &f);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap();
    }

    #[test]
    fn text_line_quotes_like_logrus_ok() {
        let f = Fields {
            msg: "two words".into(),
            extra: vec![("id".into(), "c1".into())],
        };
        let line = layer(LogFormat::Text).render(&Level::WARN, &f);
        assert!(
            line.contains("level=warning msg=\"two words\" id=c1"),
            "{line}"
        );
    }
}
