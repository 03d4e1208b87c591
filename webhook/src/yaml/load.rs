//! Reads YAML the way kubectl does, so that offline injection keeps the meaning
//! every value had for the user's `kubectl apply`.
//!
//! kubectl turns YAML into JSON with sigs.k8s.io/yaml (go-yaml v2), which
//! resolves unquoted scalars by YAML 1.1 rules: `yes`/`on`/`y` are `true`,
//! `0400` is octal 256, `1_000` is 1000. serde_yaml 0.9 follows YAML 1.2, where
//! all of those are strings. Whether a scalar was quoted is only visible in the
//! parser's events, so this module walks the events of saphyr-parser (a YAML
//! parser in safe Rust) and resolves each unquoted scalar as go-yaml does.
//! serde_yaml still parses the text first: it rejects malformed YAML with a
//! message that says where.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not valid YAML: {0}")]
    Syntax(String),
    #[error("{0}")]
    Unsupported(String),
}

/// Every document in `text`, as JSON values with kubectl's meaning.
pub fn documents(text: &str) -> Result<Vec<Value>, LoadError> {
    // serde_yaml says what is wrong with malformed input, and where.
    for de in serde_yaml::Deserializer::from_str(text) {
        <serde::de::IgnoredAny as serde::Deserialize>::deserialize(de)
            .map_err(|e| LoadError::Syntax(e.to_string()))?;
    }
    let mut parser = Parser::new(text)?;
    let mut builder = Builder::default();
    loop {
        match parser.next()? {
            Event::StreamEnd => return Ok(builder.documents),
            event => builder.event(event)?,
        }
    }
}

/// One parser event, owned.
enum Event {
    StreamEnd,
    DocumentStart,
    DocumentEnd,
    Alias(Vec<u8>),
    Scalar {
        anchor: Option<Vec<u8>>,
        tag: Option<Vec<u8>>,
        value: String,
        plain: bool,
    },
    SequenceStart(Option<Vec<u8>>),
    MappingStart(Option<Vec<u8>>),
    CollectionEnd,
    Other,
}

/// The event stream of a safe YAML parser (saphyr-parser) over a string.
struct Parser<'a> {
    inner: saphyr_parser::Parser<'a, saphyr_parser::StrInput<'a>>,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Result<Self, LoadError> {
        Ok(Parser {
            inner: saphyr_parser::Parser::new_from_str(input),
        })
    }

    fn next(&mut self) -> Result<Event, LoadError> {
        match self.inner.next() {
            None => Ok(Event::StreamEnd),
            Some(Err(e)) => Err(LoadError::Syntax(e.to_string())),
            Some(Ok((event, _span))) => Ok(convert(event)),
        }
    }
}

/// An anchor's id as a key (the parser numbers anchors; 0 means none).
fn anchor(id: usize) -> Option<Vec<u8>> {
    (id != 0).then(|| id.to_string().into_bytes())
}

fn convert(e: saphyr_parser::Event<'_>) -> Event {
    use saphyr_parser::{Event as E, ScalarStyle};
    match e {
        E::StreamEnd => Event::StreamEnd,
        E::DocumentStart(_) => Event::DocumentStart,
        E::DocumentEnd => Event::DocumentEnd,
        E::Alias(id) => Event::Alias(id.to_string().into_bytes()),
        E::Scalar(value, style, id, tag) => Event::Scalar {
            anchor: anchor(id),
            tag: tag.map(|t| {
                if t.is_yaml_core_schema() {
                    format!("tag:yaml.org,2002:{}", t.suffix).into_bytes()
                } else {
                    format!("{}{}", t.handle, t.suffix).into_bytes()
                }
            }),
            value: value.into_owned(),
            plain: style == ScalarStyle::Plain,
        },
        E::SequenceStart(id, _) => Event::SequenceStart(anchor(id)),
        E::MappingStart(id, _) => Event::MappingStart(anchor(id)),
        E::SequenceEnd | E::MappingEnd => Event::CollectionEnd,
        _ => Event::Other,
    }
}

/// A collection being read: its anchor, and what it holds so far.
enum Open {
    Seq(Option<Vec<u8>>, Vec<Value>),
    /// Entries, the key waiting for its value, and `<<` merges.
    Map {
        anchor: Option<Vec<u8>>,
        entries: Map<String, Value>,
        key: Option<String>,
        merges: Vec<Value>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: HashMap<Vec<u8>, Value>,
    documents: Vec<Value>,
    /// Whether the next value completes a `<<` key.
    merge_key: bool,
}

impl Builder {
    fn event(&mut self, event: Event) -> Result<(), LoadError> {
        match event {
            Event::DocumentStart | Event::Other | Event::StreamEnd => Ok(()),
            Event::DocumentEnd => {
                self.anchors.clear();
                Ok(())
            }
            Event::Alias(a) => match self.anchors.get(&a).cloned() {
                Some(v) => self.value(v, false),
                None => Err(LoadError::Unsupported(format!(
                    "alias *{} has no anchor",
                    String::from_utf8_lossy(&a)
                ))),
            },
            Event::Scalar {
                anchor,
                tag,
                value,
                plain,
            } => {
                let is_str = tag.as_deref() == Some(b"tag:yaml.org,2002:str")
                    || tag.as_deref() == Some(b"!");
                let merge = plain && value == "<<" && self.awaiting_key();
                let v = if plain && !is_str {
                    resolve_plain(&value)?
                } else {
                    Value::String(value)
                };
                self.remember(anchor, &v);
                self.value(v, merge)
            }
            Event::SequenceStart(anchor) => {
                self.stack.push(Open::Seq(anchor, Vec::new()));
                Ok(())
            }
            Event::MappingStart(anchor) => {
                self.stack.push(Open::Map {
                    anchor,
                    entries: Map::new(),
                    key: None,
                    merges: Vec::new(),
                });
                Ok(())
            }
            Event::CollectionEnd => self.close(),
        }
    }

    fn awaiting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Open::Map { key: None, .. })) && !self.merge_key
    }

    fn remember(&mut self, anchor: Option<Vec<u8>>, v: &Value) {
        if let Some(a) = anchor {
            self.anchors.insert(a, v.clone());
        }
    }

    fn close(&mut self) -> Result<(), LoadError> {
        let (anchor, v) = match self.stack.pop() {
            Some(Open::Seq(anchor, items)) => (anchor, Value::Array(items)),
            Some(Open::Map {
                anchor,
                mut entries,
                merges,
                ..
            }) => {
                for m in merges {
                    merge_into(&mut entries, m)?;
                }
                (anchor, Value::Object(entries))
            }
            None => return Err(LoadError::Syntax("unbalanced collection".into())),
        };
        self.remember(anchor, &v);
        self.value(v, false)
    }

    /// Places a finished value in the open collection, or as a document.
    fn value(&mut self, v: Value, merge: bool) -> Result<(), LoadError> {
        let merging = std::mem::take(&mut self.merge_key);
        match self.stack.last_mut() {
            None => self.documents.push(v),
            Some(Open::Seq(_, items)) => items.push(v),
            Some(Open::Map {
                entries,
                key,
                merges,
                ..
            }) => {
                if merging {
                    merges.push(v);
                } else if merge {
                    self.merge_key = true;
                } else if let Some(k) = key.take() {
                    entries.insert(k, v);
                } else {
                    *key = Some(key_string(v)?);
                }
            }
        }
        Ok(())
    }
}

/// `<<: *base` (or a list of them): keys the mapping does not set itself.
fn merge_into(entries: &mut Map<String, Value>, merged: Value) -> Result<(), LoadError> {
    match merged {
        Value::Object(m) => {
            for (k, v) in m {
                entries.entry(k).or_insert(v);
            }
            Ok(())
        }
        Value::Array(list) => list.into_iter().try_for_each(|m| merge_into(entries, m)),
        _ => Err(LoadError::Unsupported(
            "a `<<` merge key needs a mapping or a list of mappings".into(),
        )),
    }
}

/// A mapping key as JSON writes it (kubectl turns `true:` into `"true"`).
fn key_string(v: Value) -> Result<String, LoadError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Null => Ok("null".into()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(LoadError::Unsupported(
            "a mapping or list as a mapping key cannot be written as JSON".into(),
        )),
    }
}

/// An unquoted scalar, resolved as go-yaml v2 (kubectl) does.
pub fn resolve_plain(s: &str) -> Result<Value, LoadError> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Value::Null),
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Ok(Value::Bool(true));
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Ok(Value::Bool(false));
        }
        _ => {}
    }
    let bare = s.trim_start_matches(['+', '-']).to_ascii_lowercase();
    if bare == ".inf" || bare == ".nan" {
        return Err(LoadError::Unsupported(format!(
            "{s} is infinity or not-a-number, which JSON (and so the API server) cannot hold; quote it for a string"
        )));
    }
    match s.as_bytes().first() {
        Some(b'0'..=b'9' | b'+' | b'-') => {
            let plain = s.replace('_', "");
            if let Some(n) = go_int(&plain) {
                return Ok(n);
            }
            if yaml_style_float(&plain) {
                return Ok(float(&plain).unwrap_or_else(|| Value::String(s.to_owned())));
            }
            Ok(Value::String(s.to_owned()))
        }
        Some(b'.') => Ok(float(s).unwrap_or_else(|| Value::String(s.to_owned()))),
        _ => Ok(Value::String(s.to_owned())),
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`, then `ParseUint`: sign, then `0x`, `0o`,
/// `0b` or a leading `0` (octal) choose the base.
fn go_int(s: &str) -> Option<Value> {
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (digits, radix) = if let Some(d) = lower.strip_prefix("0x") {
        (d, 16)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (d, 8)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (d, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (&lower[1..], 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if !negative {
        return Some(Value::Number(Number::from(magnitude)));
    }
    let n = 0i64.checked_sub_unsigned(magnitude)?;
    Some(Value::Number(Number::from(n)))
}

/// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn yaml_style_float(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

/// A float as JSON carries it: integral values as integers, as Go's JSON
/// encoder prints them.
fn float(s: &str) -> Option<Value> {
    let f: f64 = s.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        return Some(Value::Number(Number::from(f as i64)));
    }
    Number::from_f64(f).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unquoted_scalars_mean_what_they_mean_to_kubectl() {
        let cases = [
            ("yes", json!(true)),
            ("On", json!(true)),
            ("n", json!(false)),
            ("OFF", json!(false)),
            ("~", json!(null)),
            ("0400", json!(256)),
            ("0o400", json!(256)),
            ("0x1F", json!(31)),
            ("0b101", json!(5)),
            ("1_000", json!(1000)),
            ("-12", json!(-12)),
            ("08", json!(8)),
            ("1e3", json!(1000)),
            ("0.5", json!(0.5)),
            (".5", json!(0.5)),
            ("12:30", json!("12:30")),
            ("2001-12-14", json!("2001-12-14")),
            ("64Mi", json!("64Mi")),
            ("yEs", json!("yEs")),
            ("1.2.3", json!("1.2.3")),
        ];
        for (text, want) in cases {
            assert_eq!(resolve_plain(text).unwrap(), want, "{text}");
        }
        assert!(resolve_plain(".inf").is_err());
    }

    #[test]
    fn quoted_scalars_stay_strings_and_structure_is_kept() {
        let docs = documents(
            "# c\na: \"yes\"\nb: 'on'\nc: yes\nd: 0400\ne: !!str 0400\nf: |\n  x\n  y\nbase: &b {p: 1, q: 2}\nm:\n  <<: *b\n  q: 3\nl: [1, on, \"1\"]\n0755: k\n---\n- x\n",
        )
        .unwrap();
        assert_eq!(
            docs,
            vec![
                json!({"a": "yes", "b": "on", "c": true, "d": 256, "e": "0400", "f": "x\ny\n",
                    "base": {"p": 1, "q": 2}, "m": {"p": 1, "q": 3}, "l": [1, true, "1"], "493": "k"}),
                json!(["x"]),
            ]
        );
    }

    #[test]
    fn malformed_yaml_says_where() {
        let err = documents("a: [1,\nb: 2\n").unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
    }
}
