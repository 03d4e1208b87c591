//! Output like kubectl's: aligned tables with upper-case headers by default,
//! JSON or YAML for tools, and colour only when standard output is a terminal
//! (and `NO_COLOR` is unset).

use std::io::IsTerminal;

use serde::Serialize;

use crate::check::{Level, Line};

/// What `-o` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Colour on or off.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    /// Colour when standard output is a terminal and `NO_COLOR` is not set.
    pub fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    pub fn plain() -> Style {
        Style { color: false }
    }

    /// `text` in the colour of `level`.
    pub fn level(&self, level: Level, text: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let code = match level {
            Level::Pass => "32",
            Level::Skip => "2",
            Level::Warn => "33",
            Level::Fail => "31;1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// A value as JSON (pretty) or YAML.
pub fn serialized<T: Serialize>(value: &T, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(value)?,
        _ => format!("{}\n", serde_json::to_string_pretty(value)?),
    })
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The check report: one line per check, its fix under it, and a summary.
pub fn check_report(lines: &[Line], style: Style) -> String {
    let width = lines
        .iter()
        .map(|l| l.check.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let pad = " ".repeat(width - l.check.chars().count());
        out.push_str(&format!(
            "{}  {}{pad}  {}\n",
            style.level(l.level, l.level.as_str()),
            l.check,
            l.message
        ));
        if let Some(fix) = &l.fix {
            out.push_str(&format!("      {}  fix: {fix}\n", " ".repeat(width)));
        }
    }
    let count = |lv| lines.iter().filter(|l| l.level == lv).count();
    out.push_str(&format!(
        "\n{} passed, {} warnings, {} failed, {} skipped\n",
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail),
        count(Level::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_colour_stays_off_when_plain() {
        let t = table(
            &["NAME", "MODE"],
            &[
                vec!["orders".into(), "strict".into()],
                vec!["a".into(), "permissive".into()],
            ],
        );
        assert_eq!(t, "NAME     MODE\norders   strict\na        permissive\n");
        let report = check_report(
            &[Line::fail("crd", "missing", "install it")],
            Style::plain(),
        );
        assert!(report.starts_with("FAIL  crd  missing\n"), "{report}");
        assert!(
            report.contains("fix: install it") && !report.contains('\x1b'),
            "{report}"
        );
        assert!(
            Style { color: true }
                .level(Level::Fail, "FAIL")
                .contains('\x1b')
        );
    }
}
