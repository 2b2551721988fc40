//! The parts of an Avro schema that schema resolution looks at, read from the JSON text the way
//! Java's `Schema.Parser` reads them: every occurrence of a type is its own node, except that a
//! reference to a named type is the node of its definition (so a recursive type is a cycle).
//! Logical types are not represented: Java resolves a `decimal` as the `bytes` or `fixed` it is
//! written in, a `date` as its `int`, and so on.

use std::collections::HashMap;
use std::fmt;

use serde_json::{Map, Value};

/// Index of a node in [`SchemaGraph::nodes`]; equal ids are the same schema object, which is
/// what the checker memoizes on (Java compares `Schema` objects by identity).
pub(super) type NodeId = usize;

#[derive(Debug)]
pub(super) struct SchemaGraph {
    nodes: Vec<Node>,
    root: NodeId,
}

#[derive(Debug)]
pub(super) enum Node {
    Primitive(Primitive),
    Array {
        items: NodeId,
    },
    Map {
        values: NodeId,
    },
    Union {
        branches: Vec<NodeId>,
    },
    Record {
        name: Name,
        fields: Vec<Field>,
    },
    Enum {
        name: Name,
        symbols: Vec<String>,
        default: Option<String>,
    },
    Fixed {
        name: Name,
        size: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Primitive {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
}

impl Primitive {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "null" => Self::Null,
            "boolean" => Self::Boolean,
            "int" => Self::Int,
            "long" => Self::Long,
            "float" => Self::Float,
            "double" => Self::Double,
            "bytes" => Self::Bytes,
            "string" => Self::String,
            _ => return None,
        })
    }
}

/// The schema type alone, what Java's `Schema.getType()` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Primitive(Primitive),
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Primitive(Primitive::Null) => "null",
            Self::Primitive(Primitive::Boolean) => "boolean",
            Self::Primitive(Primitive::Int) => "int",
            Self::Primitive(Primitive::Long) => "long",
            Self::Primitive(Primitive::Float) => "float",
            Self::Primitive(Primitive::Double) => "double",
            Self::Primitive(Primitive::Bytes) => "bytes",
            Self::Primitive(Primitive::String) => "string",
            Self::Array => "array",
            Self::Map => "map",
            Self::Union => "union",
            Self::Record => "record",
            Self::Enum => "enum",
            Self::Fixed => "fixed",
        })
    }
}

/// Name of a record, enum or fixed.
#[derive(Debug)]
pub(super) struct Name {
    /// Without the namespace: what Java's `schemaNameEquals` compares first.
    pub(super) name: String,
    pub(super) fullname: String,
    /// Full names, an alias without a dot being in the type's own namespace (Java's
    /// `Schema.getAliases()`).
    pub(super) aliases: Vec<String>,
}

#[derive(Debug)]
pub(super) struct Field {
    pub(super) name: String,
    /// As written: field names have no namespace.
    pub(super) aliases: Vec<String>,
    /// Whether the field has a `default` attribute at all; `"default": null` counts, as in Java.
    pub(super) has_default: bool,
    pub(super) schema: NodeId,
}

impl SchemaGraph {
    /// Reads an Avro schema already known to be valid JSON Avro. Fails on what Java's parser
    /// would not resolve, e.g. a reference to a named type through one of its aliases.
    pub(super) fn parse(json: &Value) -> Result<Self, String> {
        let mut parser = Parser::default();
        let root = parser.schema(json, None)?;
        Ok(Self {
            nodes: parser.nodes,
            root,
        })
    }

    pub(super) fn root(&self) -> NodeId {
        self.root
    }

    pub(super) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub(super) fn kind(&self, id: NodeId) -> Kind {
        match self.node(id) {
            Node::Primitive(primitive) => Kind::Primitive(*primitive),
            Node::Array { .. } => Kind::Array,
            Node::Map { .. } => Kind::Map,
            Node::Union { .. } => Kind::Union,
            Node::Record { .. } => Kind::Record,
            Node::Enum { .. } => Kind::Enum,
            Node::Fixed { .. } => Kind::Fixed,
        }
    }

    pub(super) fn name(&self, id: NodeId) -> Option<&Name> {
        match self.node(id) {
            Node::Record { name, .. } | Node::Enum { name, .. } | Node::Fixed { name, .. } => {
                Some(name)
            }
            _ => None,
        }
    }

    /// `record 'dhanman.sales.Invoice'`, `long`: a type as messages name it.
    pub(super) fn describe(&self, id: NodeId) -> String {
        match self.name(id) {
            Some(name) => format!("{} '{}'", self.kind(id), name.fullname),
            None => self.kind(id).to_string(),
        }
    }
}

#[derive(Default)]
struct Parser {
    nodes: Vec<Node>,
    /// Full name of each named type defined so far.
    names: HashMap<String, NodeId>,
}

impl Parser {
    /// `namespace` is the one of the innermost enclosing named type, which a name without a
    /// dot and without its own `namespace` attribute belongs to.
    fn schema(&mut self, json: &Value, namespace: Option<&str>) -> Result<NodeId, String> {
        match json {
            Value::String(name) => self.named_or_primitive(name, namespace),
            Value::Array(branches) => {
                let branches = branches
                    .iter()
                    .map(|branch| self.schema(branch, namespace))
                    .collect::<Result<_, _>>()?;
                Ok(self.add(Node::Union { branches }))
            }
            Value::Object(object) => self.complex(object, namespace),
            other => Err(format!("{other} is not a schema")),
        }
    }

    fn complex(
        &mut self,
        object: &Map<String, Value>,
        namespace: Option<&str>,
    ) -> Result<NodeId, String> {
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            // `{"type": {...}}`: the wrapped schema is the schema.
            Some(nested @ (Value::Object(_) | Value::Array(_))) => {
                return self.schema(nested, namespace);
            }
            _ => return Err("a schema object needs a \"type\"".to_owned()),
        };
        match kind {
            "array" => {
                let items = self.schema(required(object, "items")?, namespace)?;
                Ok(self.add(Node::Array { items }))
            }
            "map" => {
                let values = self.schema(required(object, "values")?, namespace)?;
                Ok(self.add(Node::Map { values }))
            }
            "record" | "error" => self.record(object, namespace),
            "enum" => {
                let name = self.define_name(object, namespace)?;
                let symbols = strings(object, "symbols")?;
                let default = object
                    .get("default")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.add_named(name, |name| Node::Enum {
                    name,
                    symbols,
                    default,
                })
            }
            "fixed" => {
                let name = self.define_name(object, namespace)?;
                let size = required(object, "size")?
                    .as_u64()
                    .ok_or("a fixed \"size\" must be a non-negative integer")?;
                self.add_named(name, |name| Node::Fixed { name, size })
            }
            other => self.named_or_primitive(other, namespace),
        }
    }

    fn record(
        &mut self,
        object: &Map<String, Value>,
        namespace: Option<&str>,
    ) -> Result<NodeId, String> {
        let name = self.define_name(object, namespace)?;
        // Registered before its fields are read, so that they can refer to it.
        let id = self.add_named(name, |name| Node::Record {
            name,
            fields: Vec::new(),
        })?;
        let own_namespace = match &self.nodes[id] {
            Node::Record { name, .. } => namespace_of(&name.fullname).map(str::to_owned),
            _ => None,
        };
        let Some(Value::Array(fields_json)) = object.get("fields") else {
            return Err("a record needs a \"fields\" array".to_owned());
        };
        let mut fields = Vec::with_capacity(fields_json.len());
        for field in fields_json {
            let field = field
                .as_object()
                .ok_or("a record field must be an object")?;
            let name = required(field, "name")?
                .as_str()
                .ok_or("a field \"name\" must be a string")?
                .to_owned();
            let schema = self.schema(required(field, "type")?, own_namespace.as_deref())?;
            fields.push(Field {
                name,
                aliases: optional_strings(field, "aliases")?,
                has_default: field.contains_key("default"),
                schema,
            });
        }
        if let Node::Record { fields: slot, .. } = &mut self.nodes[id] {
            *slot = fields;
        }
        Ok(id)
    }

    /// The name a `record`, `enum` or `fixed` defines, with Java's namespace rules: a dotted
    /// name carries its namespace, otherwise the `namespace` attribute (`""` being the null
    /// namespace) or else the enclosing one.
    fn define_name(
        &self,
        object: &Map<String, Value>,
        namespace: Option<&str>,
    ) -> Result<Name, String> {
        let written = required(object, "name")?
            .as_str()
            .ok_or("a \"name\" must be a string")?;
        let space = match written.rsplit_once('.') {
            Some((space, _)) => Some(space),
            None => match object.get("namespace") {
                Some(Value::String(space)) => Some(space.as_str()),
                Some(Value::Null) | None => namespace,
                Some(_) => return Err("a \"namespace\" must be a string".to_owned()),
            },
        }
        .filter(|space| !space.is_empty());
        let name = written.rsplit('.').next().unwrap_or(written).to_owned();
        let aliases = optional_strings(object, "aliases")?
            .into_iter()
            .map(|alias| qualify(&alias, space))
            .collect();
        Ok(Name {
            fullname: qualify(&name, space),
            name,
            aliases,
        })
    }

    fn add_named(&mut self, name: Name, node: impl FnOnce(Name) -> Node) -> Result<NodeId, String> {
        if self.names.contains_key(&name.fullname) {
            return Err(format!("'{}' is defined twice", name.fullname));
        }
        let fullname = name.fullname.clone();
        let id = self.add(node(name));
        self.names.insert(fullname, id);
        Ok(id)
    }

    /// A primitive type name or a reference to a named type defined earlier. Like Java's
    /// `Names.get`, a name without a dot is looked up in the enclosing namespace, then in the
    /// null namespace.
    fn named_or_primitive(
        &mut self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<NodeId, String> {
        if let Some(primitive) = Primitive::parse(name) {
            return Ok(self.add(Node::Primitive(primitive)));
        }
        let in_namespace = qualify(name, namespace);
        self.names
            .get(&in_namespace)
            .or_else(|| self.names.get(name))
            .copied()
            .ok_or_else(|| format!("unknown type '{in_namespace}'"))
    }

    fn add(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }
}

fn qualify(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(space) if !name.contains('.') && !space.is_empty() => format!("{space}.{name}"),
        _ => name.to_owned(),
    }
}

fn namespace_of(fullname: &str) -> Option<&str> {
    fullname.rsplit_once('.').map(|(space, _)| space)
}

fn required<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a Value, String> {
    object.get(key).ok_or_else(|| format!("missing \"{key}\""))
}

fn strings(object: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    match required(object, key)? {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("\"{key}\" must hold strings"))
            })
            .collect(),
        _ => Err(format!("\"{key}\" must be an array")),
    }
}

fn optional_strings(object: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    if object.contains_key(key) {
        strings(object, key)
    } else {
        Ok(Vec::new())
    }
}
