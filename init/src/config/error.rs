//! Configuration errors that tell the operator where to look: file, line, column and key.

use std::fmt;
use std::path::{Path, PathBuf};

/// The longest message an error carries.
const MAX_MESSAGE: usize = 400;

/// A problem with one configuration file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// 1-based column on that line.
    pub column: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        // Messages quote what the file says, and a file may say a lot: one console line.
        if message.chars().count() > MAX_MESSAGE {
            message = format!("{}... (cut)", message.chars().take(MAX_MESSAGE).collect::<String>());
        }
        ConfigError { file: file.to_path_buf(), line: None, column: None, message }
    }

    pub fn at_line(file: &Path, line: usize, message: impl Into<String>) -> Self {
        ConfigError { line: Some(line), ..ConfigError::new(file, message) }
    }

    /// Locates a byte offset of `text` as line and column.
    pub fn at_offset(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        ConfigError { line: Some(line), column: Some(column), ..ConfigError::new(file, message) }
    }

    /// Converts a TOML parse or type error, keeping its position.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        // toml's message repeats the position as a multi-line snippet; the first line is the
        // reason, which is all that fits one log line on a serial console.
        let mut message = err.message().lines().next().unwrap_or("invalid TOML").to_string();
        match err.span() {
            Some(span) => {
                // A value refused by its type (a number out of range): name the key it was given to.
                if let Some(key) = key_before(text, span.start).filter(|k| !message.starts_with(k.as_str())) {
                    message = format!("{key}: {message}");
                }
                ConfigError::at_offset(file, text, span.start, message)
            }
            None => ConfigError::new(file, message),
        }
    }
}

/// Input a client or a file chose, made safe for one log line or message: at most `max`
/// characters, control characters escaped, and how long it really was when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().nth(max).is_some() {
        out.push_str(&format!("... ({} bytes)", s.len()));
    }
    out
}

/// The key assigned on the same line just before `offset` (`key = <offset>`), if any.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let before = &text[..floor_char_boundary(text, offset.min(text.len()))];
    let line = before.rsplit('\n').next()?;
    let (lhs, rest) = line.rsplit_once('=')?;
    if !rest.trim().is_empty() {
        return None;
    }
    let key: String = lhs
        .trim_end()
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '"' | '.'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let key = key.trim_matches('"').to_string();
    (!key.is_empty()).then_some(key)
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The 1-based line on which `[table.key]` or `key =` first appears after `[section]`: used to
/// point semantic errors (found after parsing) at the right place in the file.
pub fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let headers = [format!("[{section}.{key}]"), format!("[[{section}.{key}]]")];
    let mut in_section = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if headers.iter().any(|h| line.starts_with(h.as_str())) {
            return Some(i + 1);
        }
        if line.starts_with('[') {
            in_section = line.trim_start_matches('[').trim_end_matches(']').trim() == section;
            continue;
        }
        if in_section {
            let k = line.split('=').next().unwrap_or("").trim().trim_matches('"');
            if k == key {
                return Some(i + 1);
            }
        }
    }
    None
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn keys_are_found_in_their_section() {
        let text = "[services.a]\nargv = []\n[services.b]\nafter = [\"x\"]\n[nodes]\nb = 1\n";
        assert_eq!(find_key_line(text, "services", "b"), Some(3));
        assert_eq!(find_key_line(text, "nodes", "b"), Some(6));
        assert_eq!(find_key_line(text, "services", "zz"), None);
    }

    #[test]
    fn display_names_file_line_and_column() {
        let e = ConfigError { line: Some(3), column: Some(7), ..ConfigError::new(Path::new("/etc/x.toml"), "bad") };
        assert_eq!(e.to_string(), "/etc/x.toml:3:7: bad");
        assert_eq!(ConfigError::new(Path::new("f"), "empty").to_string(), "f: empty");
    }
}
