//! Writes JSON values as block YAML that every YAML reader takes back with the
//! same meaning: kubectl (go-yaml v2, YAML 1.1), PyYAML (1.1) and YAML 1.2
//! readers alike.
//!
//! A string is written unquoted only when no reader could take it for anything
//! else: never `yes`/`no`/`on`/`off`/`y`/`n`/`true`/`false`/`null`/`~` in any
//! case, never something number-like (`0400`, `1e3`, `1_000`, `12:30`,
//! `0x1F`, dates). Everything else that is not plainly safe is double-quoted.
//! Multi-line strings are literal blocks, so scripts stay readable in review.

use std::fmt::Write as _;

use serde_json::Value;

/// One document's body, ending in a newline (no `---`).
pub fn document(v: &Value) -> String {
    let mut out = String::new();
    block(&mut out, v, 0, false);
    out
}

fn spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Whether `v` is written on the line of its key or dash.
fn inline(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => true,
    }
}

/// Writes `v` at `indent`; `started`: the first line's indentation (after a
/// `- `) is already written.
fn block(out: &mut String, v: &Value, indent: usize, started: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (i, (k, val)) in m.iter().enumerate() {
                if i > 0 || !started {
                    spaces(out, indent);
                }
                out.push_str(&string(k));
                out.push(':');
                if inline(val) {
                    out.push(' ');
                    scalar(out, val, indent + 2);
                } else {
                    out.push('\n');
                    let child = if val.is_array() { indent } else { indent + 2 };
                    block(out, val, child, false);
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, item) in a.iter().enumerate() {
                if i > 0 || !started {
                    spaces(out, indent);
                }
                out.push_str("- ");
                if inline(item) {
                    scalar(out, item, indent + 2);
                } else {
                    block(out, item, indent + 2, true);
                }
            }
        }
        other => scalar(out, other, indent + 2),
    }
}

/// A value written on one line (or a literal block at `indent`), newline included.
fn scalar(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if n.is_f64() => out.push_str(&float(&n.to_string())),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) if literal_ok(s) => {
            out.push_str(if s.ends_with('\n') { "|\n" } else { "|-\n" });
            for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
                if !line.is_empty() {
                    spaces(out, indent);
                    out.push_str(line);
                }
                out.push('\n');
            }
            return;
        }
        Value::String(s) => out.push_str(&string(s)),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
    out.push('\n');
}

/// A float with a decimal point and a signed exponent, as YAML 1.1 needs.
fn float(s: &str) -> String {
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let mut out = mantissa.to_owned();
    if !out.contains('.') {
        out.push_str(".0");
    }
    if let Some(e) = exponent {
        out.push('e');
        if !e.starts_with(['+', '-']) {
            out.push('+');
        }
        out.push_str(e);
    }
    out
}

/// Multi-line text that reads back the same as a literal block.
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\n', '\t'])
        && !s.ends_with("\n\n")
        && s.chars().all(|c| c == '\n' || !needs_escape(c))
        && !s.split('\n').any(|l| l.ends_with([' ', '\t']))
}

/// A string as a plain scalar when that is safe; else single-quoted (no
/// escapes, read the same by every YAML version) when it is one printable
/// line; else double-quoted with escapes.
fn string(s: &str) -> String {
    if plain_ok(s) {
        return s.to_owned();
    }
    if !s.chars().any(|c| c == '\n' || c == '\t' || needs_escape(c)) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters YAML does not allow unescaped in a stream.
fn needs_escape(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{84}' | '\u{86}'..='\u{9f}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}')
        || c == '\r'
}

/// Whether `s` reads back as this very string from every YAML reader.
pub fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == ' ' || "._-/:=@+,()%~^$*".contains(c);
    // `-` starts a plain scalar only when no space follows (`--flag=x`).
    let dash_ok = first == '-' && s.len() > 1 && !s.starts_with("- ") && !s.starts_with("---");
    (first.is_ascii_alphanumeric() || "/._$".contains(first) || dash_ok)
        && !s.ends_with([' ', ':'])
        && s.chars().all(allowed)
        && !s.contains(": ")
        && !special_word(s)
        && !number_like(s)
}

/// Words some YAML version reads as a boolean or null, in any case.
fn special_word(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let bare = lower.trim_start_matches(['+', '-']);
    matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null" | "~"
    ) || bare == ".inf"
        || bare == ".nan"
}

/// Anything some YAML version reads as an int, float, sexagesimal or date:
/// conservatively, digits with only `.`, `e`, signs, `:` and `_` around them,
/// and `0x`/`0o`/`0b` forms.
fn number_like(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s).replace('_', "");
    let lower = t.to_ascii_lowercase();
    for (prefix, digits) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = lower.strip_prefix(prefix)
            && !rest.is_empty()
            && rest.chars().all(|c| c.is_digit(digits))
        {
            return true;
        }
    }
    let starts_numeric = lower.starts_with(|c: char| c.is_ascii_digit())
        || (lower.starts_with('.') && lower[1..].starts_with(|c: char| c.is_ascii_digit()));
    starts_numeric && lower.chars().all(|c| "0123456789.e+-:".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::load;
    use serde_json::json;

    #[test]
    fn strings_yaml_1_1_would_misread_are_quoted() {
        for s in [
            "yes",
            "No",
            "ON",
            "off",
            "y",
            "N",
            "True",
            "false",
            "null",
            "~",
            "0400",
            "1e3",
            "1_000",
            "12:30",
            "0x1F",
            ".5",
            "2001-12-14",
            "1.2.3",
            "+1",
            ".inf",
            "",
            " x",
            "a: b",
            "- x",
            "-",
            "---x",
            "-1",
            "-.inf",
            "#c",
            "*a",
            "&a",
            "!x",
            "%x",
            "@x",
            "'q'",
            "\"q\"",
            "x:",
            "{a}",
            "[a]",
        ] {
            assert!(!plain_ok(s), "{s:?} must be quoted");
        }
        for s in [
            "64Mi",
            "10m",
            "nginx:1.27",
            "kube-mtls.io/inject",
            "http://x/y",
            "a b",
            "24h",
            "enabled",
            ".dockerconfigjson",
            "--inbound-ports=8080",
            "-Xmx512m",
            "0 2 * * *",
            "sa/*,x",
        ] {
            assert!(plain_ok(s), "{s:?} may stay plain");
        }
    }

    #[test]
    fn every_value_reads_back_the_same() {
        let v = json!({
            "s": ["yes", "on", "0400", "1e3", "1_000", "12:30", "~", "null", "a\"b\\c", "tab\there", "\u{7f}"],
            "script": "set -e\necho hi\n\n  indented\n",
            "nochomp": "a\nb",
            "quotes": ["it's", "{\"a\":1}", "0 2 * * *", "sa/*,x", "' '"],
            "trailing": "a \nb",
            "n": [256, -3, 0.5, 1.0e300, true, null],
            "empty": {"m": {}, "l": [], "s": ""},
            "nested": [[1, 2], [{"a": 1, "b": [{"c": "d"}]}]],
            "yes": "key needs quotes",
        });
        let text = document(&v);
        assert_eq!(load::documents(&text).unwrap(), vec![v.clone()], "{text}");
        let back: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back, v, "a YAML 1.2 reader agrees:\n{text}");
    }
}
