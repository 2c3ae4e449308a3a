//! Where each field of a YAML document starts, so that errors found after parsing
//! (a wrong type, an http URL, a bad template) still point at a line and column.
//!
//! serde_yaml keeps no spans once a document is parsed, so we walk yaml-rust2's
//! marked event stream once and record the position of every key and sequence item
//! under its field path (`credentials.config.auth.tokenHost`, `base_urls[0]`).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// Field path → position of that field (its key, or the item for sequence entries).
#[derive(Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
}

/// A YAML syntax error, with where the parser stopped.
#[derive(Debug)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

impl PositionIndex {
    pub fn build(text: &str) -> Result<Self, SyntaxError> {
        let mut builder = Builder::default();
        Parser::new_from_str(text)
            .load(&mut builder, false)
            .map_err(|error| SyntaxError {
                position: position(error.marker()),
                message: error.info().to_owned(),
            })?;
        Ok(Self {
            positions: builder.positions,
        })
    }

    /// The position of `path`, or of its nearest ancestor that has one (a field that
    /// is missing altogether is reported at the mapping that should hold it).
    pub fn find(&self, path: &str) -> Position {
        let mut path = path;
        loop {
            if let Some(found) = self.positions.get(path) {
                return *found;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => {
                    return self
                        .positions
                        .get("")
                        .copied()
                        .unwrap_or(Position { line: 1, column: 1 })
                }
            }
        }
    }
}

fn position(marker: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position {
        line: marker.line(),
        column: marker.col() + 1,
    }
}

enum Frame {
    Mapping { key: Option<String> },
    Sequence { next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<(String, Frame)>,
    positions: HashMap<String, Position>,
}

impl Builder {
    /// Called for every node; returns the node's path when it is a value (not a key).
    fn enter_node(&mut self, marker: &Marker, scalar: Option<&str>) -> Option<String> {
        let Some((parent, frame)) = self.stack.last_mut() else {
            // The document itself: its first line, from the start.
            let line = position(marker).line;
            self.positions.insert(String::new(), Position { line, column: 1 });
            return Some(String::new());
        };
        match frame {
            Frame::Mapping { key } => match key.take() {
                None => {
                    // A key: remember it; the key's own position is the field's.
                    let name = scalar.unwrap_or_default().to_owned();
                    let path = join(parent, &name);
                    self.positions.insert(path, position(marker));
                    *key = Some(name);
                    None
                }
                Some(name) => Some(join(parent, &name)),
            },
            Frame::Sequence { next } => {
                let path = format!("{parent}[{next}]");
                *next += 1;
                self.positions.insert(path.clone(), position(marker));
                Some(path)
            }
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                self.enter_node(&marker, Some(&value));
            }
            Event::Alias(_) => {
                self.enter_node(&marker, None);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.enter_node(&marker, None) {
                    self.stack.push((path, Frame::Mapping { key: None }));
                } else {
                    // A complex key; keep the stack balanced and index nothing below it.
                    self.stack.push(("?".into(), Frame::Mapping { key: None }));
                }
            }
            Event::SequenceStart(..) => {
                let path = self.enter_node(&marker, None).unwrap_or_else(|| "?".into());
                self.stack.push((path, Frame::Sequence { next: 0 }));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_flow_fields_have_positions() {
        let text = "name: hubspot\nbase_urls:\n  - https://a\n  - https://b\ncredentials:\n  config:\n    auth: { tokenHost: x, tokenPath: /t }\n";
        let index = PositionIndex::build(text).unwrap();
        assert_eq!(index.find("name"), Position { line: 1, column: 1 });
        assert_eq!(index.find("base_urls[1]"), Position { line: 4, column: 5 });
        assert_eq!(
            index.find("credentials.config.auth.tokenPath"),
            Position { line: 7, column: 27 }
        );
        // Missing fields fall back to their nearest ancestor.
        assert_eq!(
            index.find("credentials.config.auth.authorizeHost"),
            Position { line: 7, column: 5 }
        );
        assert_eq!(index.find("nowhere.at.all"), Position { line: 1, column: 1 });
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let error = PositionIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(error.position.line >= 1, "{error:?}");
        assert!(!error.message.is_empty());
    }
}
