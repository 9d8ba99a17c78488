//! TOML text → raw file shape, with every failure located: syntax errors get
//! a line and column, deserialisation errors (unknown key, wrong type) also
//! get the dotted key path, found by matching the error's span against the
//! spans of the parsed document.

use super::error::{ConfigError, Location, TomlError};
use serde::de::DeserializeOwned;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};

/// Parses `text` (the contents of `path`) into `T`.
pub(super) fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let document = DeTable::parse(text).map_err(|source| ConfigError::Syntax {
        path: path.to_path_buf(),
        at: source.span().map(|s| location(text, s.start)),
        source: TomlError::new(source),
    })?;
    let source = match T::deserialize(toml::Deserializer::from(document)) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let path = path.to_path_buf();
    let span = source.span();
    let at = span.as_ref().map(|s| location(text, s.start));
    // The document was consumed by the deserializer: parse it again (error
    // path only) to find which key the span belongs to.
    let blamed = span.and_then(|span| {
        let document = DeTable::parse(text).ok()?;
        blame(document.get_ref(), &span)
    });
    let source = TomlError::new(source);
    Err(match (blamed, at) {
        (Some(Blame::Key(key)), Some(at)) => ConfigError::UnknownKey {
            path,
            key,
            at,
            source,
        },
        (Some(Blame::Value(key)), at) => ConfigError::WrongType {
            path,
            key: Some(key),
            at,
            source,
        },
        (_, at) => ConfigError::WrongType {
            path,
            key: None,
            at,
            source,
        },
    })
}

/// 1-based line and character column of byte `offset` in `text`.
pub(super) fn location(text: &str, offset: usize) -> Location {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Location {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// What an error span points at.
#[derive(Debug, PartialEq, Eq)]
enum Blame {
    /// A key (the deserializer refused the key itself: unknown key).
    Key(String),
    /// A key's value (wrong type, bad enum value, missing nested key).
    Value(String),
}

/// Finds the key or value whose span is exactly `span`, deepest first.
fn blame(table: &DeTable<'_>, span: &Range<usize>) -> Option<Blame> {
    let mut path = Vec::new();
    blame_in(table, span, &mut path)
}

fn blame_in(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> Option<Blame> {
    for (key, value) in table.iter() {
        path.push(key_segment(key.get_ref()));
        if key.span() == *span {
            return Some(Blame::Key(join(path)));
        }
        if let Some(found) = blame_value(value, span, path) {
            return Some(found);
        }
        path.pop();
    }
    None
}

fn blame_value(
    value: &toml::Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<String>,
) -> Option<Blame> {
    // Tables defined by `[header]` have spans that need not enclose their
    // keys, so always search inside before checking the value itself.
    match value.get_ref() {
        DeValue::Table(inner) => {
            if let Some(found) = blame_in(inner, span, path) {
                return Some(found);
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if let Some(found) = blame_value(item, span, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        _ => {}
    }
    (value.span() == *span).then(|| Blame::Value(join(path)))
}

/// `a`, `b`, `[0]`, `c` → `a.b[0].c`.
fn join(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !segment.starts_with('[') {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

/// A key as it would be written: bare when it can be, quoted otherwise.
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(location(text, 0), Location { line: 1, column: 1 });
        assert_eq!(location(text, 6), Location { line: 2, column: 1 });
        // 'é' is two bytes but one column.
        let eq = 6 + text[6..].find(" =").unwrap();
        assert_eq!(text[6..eq].chars().count(), 2);
        assert_eq!(location(text, eq), Location { line: 2, column: 3 });
        assert_eq!(location(text, 999).line, 3);
    }

    #[test]
    fn blame_finds_nested_keys_and_values() {
        let text = "[a]\nb = 1\n[a.c]\nd = \"x\"\n";
        let doc = DeTable::parse(text).unwrap();
        let d_val = text.find("\"x\"").unwrap();
        assert_eq!(
            blame(doc.get_ref(), &(d_val..d_val + 3)),
            Some(Blame::Value("a.c.d".into()))
        );
        let b_key = text.find('b').unwrap();
        assert_eq!(
            blame(doc.get_ref(), &(b_key..b_key + 1)),
            Some(Blame::Key("a.b".into()))
        );
        assert_eq!(blame(doc.get_ref(), &(0..0)), None);
        let text = "a = [1, [2, 3]]\n";
        let doc = DeTable::parse(text).unwrap();
        let three = text.find('3').unwrap();
        assert_eq!(
            blame(doc.get_ref(), &(three..three + 1)),
            Some(Blame::Value("a[1][1]".into()))
        );
    }

    #[test]
    fn odd_keys_are_quoted() {
        assert_eq!(key_segment("plain_key-1"), "plain_key-1");
        assert_eq!(key_segment("a.b"), "\"a.b\"");
        assert_eq!(key_segment(""), "\"\"");
    }
}
