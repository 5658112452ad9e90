//! A YAML document as a tree whose every node remembers where it stands in the file, so that
//! every problem found later (a wrong type, a learning rate <= 0) can be reported at its line.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the sweep file, both 1-based, as editors count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A scalar with its YAML 1.2 core-schema type resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Keys in file order, each with its own position.
    Map(Vec<(String, Pos, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

impl Node {
    /// What a user would call this node's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar(Scalar::Null) => "null",
            Value::Scalar(Scalar::Bool(_)) => "a boolean",
            Value::Scalar(Scalar::Int(_)) => "an integer",
            Value::Scalar(Scalar::Float(_)) => "a number",
            Value::Scalar(Scalar::Str(_)) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    pub fn as_map(&self) -> Option<&[(String, Pos, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
}

/// A syntax error, at the position the parser stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty file is an empty mapping.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: (*e.marker()).into(),
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    Ok(builder.root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        value: Value::Map(Vec::new()),
    }))
}

enum Open {
    Seq(Pos, Vec<Node>),
    /// Entries so far, and a key waiting for its value.
    Map(Pos, Vec<(String, Pos, Node)>, Option<(String, Pos)>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn fail(&mut self, pos: Pos, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { pos, message });
        }
    }

    /// Places a finished node into its parent (or makes it the document).
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, pending)) => match pending.take() {
                Some((key, key_pos)) => {
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        self.fail(key_pos, format!("duplicate key `{key}`"));
                    } else {
                        entries.push((key, key_pos, node));
                    }
                }
                None => match node.value {
                    Value::Scalar(s) => *pending = Some((scalar_key(&s), node.pos)),
                    _ => self.fail(node.pos, "mapping keys must be plain scalars".into()),
                },
            },
        }
    }
}

fn scalar_key(s: &Scalar) -> String {
    match s {
        Scalar::Null => "null".into(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => f.to_string(),
        Scalar::Str(s) => s.clone(),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(text, style, _, _) => {
                let scalar = if style == TScalarStyle::Plain {
                    resolve_plain(&text)
                } else {
                    Scalar::Str(text)
                };
                self.push(Node {
                    pos,
                    value: Value::Scalar(scalar),
                });
            }
            Event::SequenceStart(..) => self.stack.push(Open::Seq(pos, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Open::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq(pos, items)) => Node {
                        pos,
                        value: Value::Seq(items),
                    },
                    Some(Open::Map(pos, entries, _)) => Node {
                        pos,
                        value: Value::Map(entries),
                    },
                    None => return,
                };
                self.push(node);
            }
            Event::Alias(_) => self.fail(pos, "anchors and aliases are not supported".into()),
            Event::DocumentStart if self.root.is_some() => {
                self.fail(pos, "a sweep file holds one YAML document".into())
            }
            _ => {}
        }
    }
}

/// The YAML 1.2 core schema for plain scalars.
fn resolve_plain(text: &str) -> Scalar {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Scalar::Int(i);
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Scalar::Float(f);
        }
    }
    Scalar::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_point_at_values() {
        let doc = parse("a: 1\nb:\n  c: [0.5, x]\n").unwrap();
        let map = doc.as_map().unwrap();
        assert_eq!(map[0].0, "a");
        assert_eq!(map[0].1, Pos { line: 1, col: 1 });
        assert_eq!(map[0].2.pos, Pos { line: 1, col: 4 });
        let b = map[1].2.as_map().unwrap();
        let Value::Seq(items) = &b[0].2.value else {
            panic!("not a list")
        };
        assert_eq!(items[0].value, Value::Scalar(Scalar::Float(0.5)));
        assert_eq!(items[1].pos, Pos { line: 3, col: 12 });
        assert_eq!(items[1].value, Value::Scalar(Scalar::Str("x".into())));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        assert_eq!(resolve_plain("1e-3"), Scalar::Float(1e-3));
        assert_eq!(resolve_plain("12"), Scalar::Int(12));
        assert_eq!(resolve_plain("true"), Scalar::Bool(true));
        assert_eq!(resolve_plain("vgg8"), Scalar::Str("vgg8".into()));
        assert_eq!(resolve_plain("~"), Scalar::Null);
        let quoted = parse("a: '12'").unwrap();
        assert_eq!(
            quoted.as_map().unwrap()[0].2.value,
            Value::Scalar(Scalar::Str("12".into()))
        );
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 1 });
        assert_eq!(err.message, "duplicate key `a`");
    }
}
