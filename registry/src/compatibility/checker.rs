//! Java's `SchemaCompatibility.ReaderWriterCompatibilityChecker`, step for step: the same
//! rules, in the same order, with the same memo of (reader, writer) node pairs. The order and
//! the memo are part of the semantics: a pair met again while it is still being checked (a
//! recursive type) counts as compatible, and that assumption is remembered with the result.

use std::collections::HashMap;

use super::Incompatibility;
use super::graph::{Kind, Node, NodeId, Primitive, SchemaGraph};

/// How many incompatibilities one result keeps. Memoized results are merged again wherever
/// their pair recurs, so without a bound a schema that refers to the same types many times can
/// make the lists grow exponentially; only whether a list is empty decides the verdict.
const MAX_REPORTED: usize = 50;

/// How deep the check may go (records within records, references to named types defined
/// elsewhere). Java would overflow its stack somewhere further; a registry must not.
const MAX_DEPTH: usize = 200;

/// How many pairs of types one judgement may compare, its checks of every earlier version
/// together ([`Budget`]). Memoized pairs cost little, but a union of many named types met
/// in many fields compares every branch with every other each time: a few kilobytes of
/// schema held a process's workers for a minute. About a second of work here; past it the
/// schemas are taken as incompatible, never as compatible.
pub const MAX_COMPARISONS: u64 = 1_000_000;

/// The comparisons a judgement has left.
#[derive(Debug)]
pub struct Budget(std::cell::Cell<u64>);

impl Default for Budget {
    fn default() -> Self {
        Budget(std::cell::Cell::new(MAX_COMPARISONS))
    }
}

impl Budget {
    /// Takes one comparison; `false` once none are left.
    fn spend(&self) -> bool {
        let left = self.0.get();
        self.0.set(left.saturating_sub(1));
        left > 0
    }
}

/// Why `reader` cannot read everything `writer` may write; empty when it can. Comparisons
/// are taken from `budget`; when it runs out the answer is an incompatibility saying so.
pub(super) fn check(
    reader: &SchemaGraph,
    writer: &SchemaGraph,
    budget: &Budget,
) -> Vec<Incompatibility> {
    let mut checker = Checker {
        reader,
        writer,
        memo: HashMap::new(),
        location: Vec::new(),
        fields: Vec::new(),
        depth: 0,
        budget,
    };
    checker.compatibility(reader.root(), writer.root())
}

/// Appends `more` to `found`, without repeats and within [`MAX_REPORTED`].
fn merge(found: &mut Vec<Incompatibility>, more: Vec<Incompatibility>) {
    for incompatibility in more {
        if found.len() == MAX_REPORTED {
            break;
        }
        if !found.contains(&incompatibility) {
            found.push(incompatibility);
        }
    }
}

/// Whether a `writer` value reads as a different primitive `reader`: Avro's promotions.
fn promotes(writer: Primitive, reader: Primitive) -> bool {
    use Primitive::{Bytes, Double, Float, Int, Long};
    matches!(
        (writer, reader),
        (Int, Long | Float | Double)
            | (Long, Float | Double)
            | (Float, Double)
            | (Primitive::String, Bytes)
            | (Bytes, Primitive::String)
    )
}

enum Memo {
    InProgress,
    Done(Vec<Incompatibility>),
}

struct Checker<'a> {
    reader: &'a SchemaGraph,
    writer: &'a SchemaGraph,
    memo: HashMap<(NodeId, NodeId), Memo>,
    /// JSON pointer tokens from the reader's root to the node being checked.
    location: Vec<String>,
    /// Human name of the enclosing field, e.g. `lines[].amount`, one segment per level.
    fields: Vec<String>,
    /// Nesting of `compatibility` calls.
    depth: usize,
    budget: &'a Budget,
}

impl Checker<'_> {
    /// Java's `getCompatibility`.
    fn compatibility(&mut self, reader: NodeId, writer: NodeId) -> Vec<Incompatibility> {
        if !self.budget.spend() {
            return vec![self.incompatible(
                None,
                format!(
                    "the schemas are too large to compare: more than {MAX_COMPARISONS} \
                     comparisons of their types"
                ),
            )];
        }
        match self.memo.get(&(reader, writer)) {
            // Compatible unless proven otherwise, which is what ends a recursion.
            Some(Memo::InProgress) => Vec::new(),
            Some(Memo::Done(found)) => found.clone(),
            None if self.depth == MAX_DEPTH => vec![self.incompatible(
                None,
                format!("nested more than {MAX_DEPTH} levels deep, too deep to check"),
            )],
            None => {
                self.memo.insert((reader, writer), Memo::InProgress);
                self.depth += 1;
                let found = self.calculate(reader, writer);
                self.depth -= 1;
                self.memo
                    .insert((reader, writer), Memo::Done(found.clone()));
                found
            }
        }
    }

    /// [`Self::compatibility`] one level down in the reader, at `token`.
    fn compatibility_at(
        &mut self,
        token: &str,
        reader: NodeId,
        writer: NodeId,
    ) -> Vec<Incompatibility> {
        self.location.push(token.to_owned());
        let found = self.compatibility(reader, writer);
        self.location.pop();
        found
    }

    /// Java's `calculateCompatibility`.
    fn calculate(&mut self, reader: NodeId, writer: NodeId) -> Vec<Incompatibility> {
        let (reader_graph, writer_graph) = (self.reader, self.writer);
        let (reader_kind, writer_kind) = (reader_graph.kind(reader), writer_graph.kind(writer));
        if reader_kind == writer_kind {
            return match (reader_graph.node(reader), writer_graph.node(writer)) {
                (Node::Primitive(_), _) => Vec::new(),
                (Node::Array { items: r }, Node::Array { items: w }) => {
                    let (r, w) = (*r, *w);
                    self.within_field("[]", |this| this.compatibility_at("items", r, w))
                }
                (Node::Map { values: r }, Node::Map { values: w }) => {
                    let (r, w) = (*r, *w);
                    self.within_field("{}", |this| this.compatibility_at("values", r, w))
                }
                (Node::Fixed { size: r_size, .. }, Node::Fixed { size: w_size, .. }) => {
                    let mut found = self.names(reader, writer);
                    if r_size != w_size {
                        found.push(self.incompatible(
                            Some("size"),
                            format!(
                                "reader {} has size {r_size} but the writer's has size {w_size}",
                                self.reader.describe(reader)
                            ),
                        ));
                    }
                    found
                }
                (
                    Node::Enum {
                        symbols: r_symbols,
                        default,
                        ..
                    },
                    Node::Enum {
                        symbols: w_symbols, ..
                    },
                ) => {
                    let mut found = self.names(reader, writer);
                    let mut missing: Vec<&String> = w_symbols
                        .iter()
                        .filter(|symbol| !r_symbols.contains(symbol))
                        .collect();
                    missing.sort();
                    missing.dedup();
                    let has_default = default
                        .as_ref()
                        .is_some_and(|default| r_symbols.contains(default));
                    if !missing.is_empty() && !has_default {
                        let missing = missing
                            .iter()
                            .map(|symbol| symbol.as_str())
                            .collect::<Vec<_>>();
                        found.push(self.incompatible(
                            Some("symbols"),
                            format!(
                                "reader {} lacks the writer's symbols [{}] and has no default symbol",
                                self.reader.describe(reader),
                                missing.join(", ")
                            ),
                        ));
                    }
                    found
                }
                (Node::Record { .. }, Node::Record { .. }) => {
                    let mut found = self.names(reader, writer);
                    merge(&mut found, self.record_fields(reader, writer));
                    found
                }
                (Node::Union { .. }, Node::Union { branches }) => {
                    // Every branch the writer may have written must be readable.
                    let mut found = Vec::new();
                    for &branch in branches {
                        let more = self.compatibility(reader, branch);
                        merge(&mut found, more);
                    }
                    found
                }
                _ => unreachable!("nodes of the same kind"),
            };
        }

        if let Node::Union { branches } = writer_graph.node(writer) {
            let mut found = Vec::new();
            for &branch in branches {
                let more = self.compatibility(reader, branch);
                merge(&mut found, more);
            }
            return found;
        }

        match (reader_kind, writer_kind) {
            (Kind::Primitive(reader), Kind::Primitive(writer)) if promotes(writer, reader) => {
                Vec::new()
            }
            (Kind::Union, _) => self.reader_union(reader, writer),
            _ => vec![self.incompatible(
                None,
                format!(
                    "reader type {} cannot read writer type {}",
                    self.reader.describe(reader),
                    self.writer.describe(writer)
                ),
            )],
        }
    }

    /// A reader union reads a non-union writer when one of its branches does.
    fn reader_union(&mut self, reader: NodeId, writer: NodeId) -> Vec<Incompatibility> {
        let reader_graph = self.reader;
        let Node::Union { branches } = reader_graph.node(reader) else {
            unreachable!("called with a reader union")
        };
        let mut closest = None;
        for (index, &branch) in branches.iter().enumerate() {
            let found = self.compatibility_at(&index.to_string(), branch, writer);
            if found.is_empty() {
                return found;
            }
            // The branch of the writer's type (and name), if any, says best what is wrong.
            if closest.is_none()
                && self.reader.kind(branch) == self.writer.kind(writer)
                && self.names_match(branch, writer)
            {
                closest = Some(found);
            }
        }
        let mut found = vec![self.incompatible(
            None,
            format!(
                "reader union has no branch that can read writer type {}",
                self.writer.describe(writer)
            ),
        )];
        merge(&mut found, closest.unwrap_or_default());
        found
    }

    /// Java's `checkReaderWriterRecordFields`: every reader field is read from the writer field
    /// of the same name (or of one of its aliases), or else takes its default.
    fn record_fields(&mut self, reader: NodeId, writer: NodeId) -> Vec<Incompatibility> {
        let (reader_graph, writer_graph) = (self.reader, self.writer);
        let (
            Node::Record { fields, .. },
            Node::Record {
                fields: writer_fields,
                ..
            },
        ) = (reader_graph.node(reader), writer_graph.node(writer))
        else {
            unreachable!("called with two records")
        };
        let mut found = Vec::new();
        self.location.push("fields".to_owned());
        for (index, field) in fields.iter().enumerate() {
            self.location.push(index.to_string());
            // The field's own name first, then its aliases in order; Java throws when more
            // than one of them is in the writer, the Python port takes the first.
            let writer_field =
                std::iter::once(&field.name)
                    .chain(&field.aliases)
                    .find_map(|name| {
                        writer_fields
                            .iter()
                            .find(|candidate| &candidate.name == name)
                    });
            let schema = field.schema;
            match writer_field {
                Some(writer_field) => {
                    let writer_schema = writer_field.schema;
                    let more = self.within_field(&field.name, |this| {
                        this.compatibility_at("type", schema, writer_schema)
                    });
                    merge(&mut found, more);
                }
                // A reader enum's default symbol does not stand in for a missing field: Java
                // then checks the enum against the whole writer record, which always fails.
                None if !field.has_default => {
                    let missing = Incompatibility {
                        path: self.path(None),
                        message: format!(
                            "reader has no default for field '{}', which the writer lacks",
                            self.field_name(&field.name)
                        ),
                    };
                    merge(&mut found, vec![missing]);
                }
                None => {}
            }
            self.location.pop();
        }
        self.location.pop();
        found
    }

    /// Java's `checkSchemaNames`.
    fn names(&self, reader: NodeId, writer: NodeId) -> Vec<Incompatibility> {
        if self.names_match(reader, writer) {
            return Vec::new();
        }
        let writer_name = self
            .writer
            .name(writer)
            .map_or("", |name| name.fullname.as_str());
        vec![self.incompatible(
            Some("name"),
            format!(
                "reader {} matches the writer's '{writer_name}' neither by name nor by alias",
                self.reader.describe(reader)
            ),
        )]
    }

    /// Java's `schemaNameEquals`: the unqualified names are equal, or one of the reader's
    /// aliases (full names) is the writer's full name. Types without a name match.
    fn names_match(&self, reader: NodeId, writer: NodeId) -> bool {
        match (self.reader.name(reader), self.writer.name(writer)) {
            (Some(reader), Some(writer)) => {
                reader.name == writer.name || reader.aliases.contains(&writer.fullname)
            }
            _ => true,
        }
    }

    fn within_field<T>(&mut self, segment: &str, check: impl FnOnce(&mut Self) -> T) -> T {
        self.fields.push(segment.to_owned());
        let result = check(self);
        self.fields.pop();
        result
    }

    /// `lines[].amount` for field `amount` of the items of field `lines`; a collection at the
    /// root adds nothing (`amount` in the records of an array).
    fn field_name(&self, last: &str) -> String {
        let mut name = String::new();
        for segment in self.fields.iter().map(String::as_str).chain([last]) {
            let collection = matches!(segment, "[]" | "{}");
            if name.is_empty() && collection {
                continue;
            }
            if !name.is_empty() && !segment.is_empty() && !collection {
                name.push('.');
            }
            name.push_str(segment);
        }
        name
    }

    /// An incompatibility at the current location (or one token below it), its message
    /// prefixed with the enclosing field when there is one.
    fn incompatible(&self, token: Option<&str>, message: String) -> Incompatibility {
        let in_field = self
            .fields
            .iter()
            .any(|segment| !matches!(segment.as_str(), "[]" | "{}"));
        let message = match in_field {
            true => format!("field '{}': {message}", self.field_name("")),
            false => message,
        };
        Incompatibility {
            path: self.path(token),
            message,
        }
    }

    /// The current location as a JSON pointer into the reader schema, `/` being its root.
    fn path(&self, token: Option<&str>) -> String {
        let mut path = String::new();
        for token in self.location.iter().map(String::as_str).chain(token) {
            path.push('/');
            path.push_str(&token.replace('~', "~0").replace('/', "~1"));
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }
}
