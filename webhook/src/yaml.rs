//! YAML for offline injection, read and written so that kubectl sees the same
//! values the user wrote.
//!
//! - [`split`]: a stream cut into documents at its `---` lines, textually, so
//!   documents that are not changed go out byte for byte, comments included.
//! - [`load`]: a document read with kubectl's (YAML 1.1) meaning of unquoted values.
//! - [`emit`]: a changed document written so that YAML 1.1 and 1.2 readers agree.

pub mod emit;
pub mod load;

/// One document of a stream, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The whole text, separator line (if any) included.
    pub text: &'a str,
    /// The `---` line that opened it, with its line break; empty for a first
    /// document without one.
    pub separator: &'a str,
    /// Comment and blank lines right after the separator.
    pub leading_comments: &'a str,
}

impl Chunk<'_> {
    /// Whether the chunk holds nothing but comments, blank lines, directives
    /// and document markers.
    pub fn is_empty(&self) -> bool {
        self.text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t.starts_with('%') || marker(l) || t == "..."
        })
    }
}

/// A `---` document start line (alone, or followed by a space or tab).
fn marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Cuts `input` into documents at each `---` line. Concatenating the chunks'
/// texts gives back `input` exactly. A `---` at the start of a line always
/// starts a document in YAML, even inside a block or quoted scalar, so this
/// textual cut agrees with any YAML parser.
pub fn split(input: &str) -> Vec<Chunk<'_>> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        if marker(line) && offset > 0 {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(input.len());
    starts
        .windows(2)
        .map(|w| chunk(&input[w[0]..w[1]]))
        .filter(|c| !c.text.is_empty())
        .collect()
}

fn chunk(text: &str) -> Chunk<'_> {
    let separator = match text.split_inclusive('\n').next() {
        Some(first) if marker(first) => first,
        _ => "",
    };
    let rest = &text[separator.len()..];
    let comments: usize = rest
        .split_inclusive('\n')
        .take_while(|l| {
            let t = l.trim();
            (t.is_empty() || t.starts_with('#')) && l.ends_with('\n')
        })
        .map(str::len)
        .sum();
    Chunk {
        text,
        separator,
        leading_comments: &rest[..comments],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_cut_at_marker_lines_and_nothing_is_lost() {
        let input = "# head\na: 1\n---\n# about b\nb: 2\n--- # c\nc: |\n  ---x\n---\r\nd: 4";
        let chunks = split(input);
        assert_eq!(
            chunks.iter().map(|c| c.text).collect::<String>(),
            input,
            "the chunks add up to the input"
        );
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[0].separator, "");
        assert_eq!(chunks[0].leading_comments, "# head\n");
        assert_eq!(chunks[1].separator, "---\n");
        assert_eq!(chunks[1].leading_comments, "# about b\n");
        assert_eq!(chunks[2].separator, "--- # c\n");
        assert!(
            chunks[2].text.contains("  ---x"),
            "an indented --- is content"
        );
        assert_eq!(chunks[3].separator, "---\r\n");
        assert!(split("---\n# only a comment\n")[0].is_empty());
        assert!(!chunks[3].is_empty());
    }
}
