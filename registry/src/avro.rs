//! What makes two Avro schema texts "the same schema" for the registry.
//!
//! Two forms are derived from a schema's JSON, both written without whitespace, with full names
//! (no `namespace` attributes), primitives in their short form (`"int"`, not `{"type":"int"}`)
//! and attributes in a fixed order:
//!
//! * the **identity form** keeps every attribute: docs, defaults, aliases, logical types,
//!   `order`, custom properties. Registration without `normalize` deduplicates on it, so texts
//!   that differ only in whitespace, attribute order or how names are qualified are one schema,
//!   while texts that differ in a default or a doc are two, as in Confluent (which compares
//!   Avro's `Schema.toString()`).
//! * the **normalized form** (`?normalize=true`) is the identity form without `doc` and with
//!   aliases sorted: the Avro parsing canonical form plus what that form drops but changes how
//!   data is read (defaults, aliases, logical types, non-default `order`, enum defaults, custom
//!   properties such as `connect.name`).

use apache_avro::Schema;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A schema that parsed as Avro, with what registration deduplicates on.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// Exactly as supplied; this is what clients get back.
    pub text: String,
    /// Avro parsing canonical form (drops docs, defaults, aliases, logical types).
    pub canonical: String,
    /// sha256 of the identity form (see the module docs): the unique key of a stored schema.
    pub fingerprint: Vec<u8>,
    /// The normalized form; what `?normalize=true` registers.
    pub normalized: String,
    /// sha256 of `normalized`; what `?normalize=true` matches a subject's versions on.
    pub normalized_fingerprint: Vec<u8>,
}

impl ParsedSchema {
    pub fn parse(text: &str) -> Result<Self> {
        let schema = parse_avro(text)?;
        // Valid Avro is valid JSON; parsing it again gives the attributes apache-avro's own
        // model doesn't keep (custom properties on any schema, for one).
        let json: Value =
            serde_json::from_str(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        let identity = Form::Identity.render(&json);
        let normalized = Form::Normalized.render(&json);
        Ok(Self {
            text: text.to_owned(),
            canonical: schema.canonical_form(),
            fingerprint: Sha256::digest(identity.as_bytes()).to_vec(),
            normalized_fingerprint: Sha256::digest(normalized.as_bytes()).to_vec(),
            normalized,
        })
    }

    /// The schema as `?normalize=true` stores it: its normalized form as the text.
    pub fn into_normalized(self) -> Result<Self> {
        Self::parse(&self.normalized)
    }
}

/// `text` parsed by apache-avro, refusing first what would make it panic instead of failing.
/// apache-avro 0.22 renders a parsing canonical form (`Schema::canonical_form`, also called by
/// its parser for the message about a bad default) from JSON that keeps custom attributes, and
/// panics on one named like a schema attribute that holds no schema there, e.g. a field's
/// `"symbols": null`, a record's `"order": 5` or a non-integer `"size"`.
pub(crate) fn parse_avro(text: &str) -> Result<Schema> {
    if let Ok(json) = serde_json::from_str::<Value>(text)
        && let Some(attribute) = unrenderable_attribute(&json).filter(|a| !a.is_empty())
    {
        return Err(Error::InvalidSchema(format!(
            "attribute '{attribute}' must hold a schema, a name or (size, precision, scale) an integer"
        )));
    }
    Schema::parse_str(text).map_err(|e| Error::InvalidSchema(e.to_string()))
}

/// The first attribute apache-avro's canonical form rendering would panic on: it walks the
/// attributes the canonical form keeps (and `order`, `precision`, `scale`) in every object, and
/// drops the others (`default`, `doc`, custom ones with other names) unread. `""` when `json`
/// itself is no schema (a number, a boolean, null): the attribute holding it is the culprit.
fn unrenderable_attribute(json: &Value) -> Option<&str> {
    match json {
        Value::String(_) => None,
        Value::Array(items) => items.iter().find_map(unrenderable_attribute),
        Value::Object(map) if map.len() == 1 && map.get("type").is_some_and(Value::is_string) => {
            None
        }
        Value::Object(map) => {
            let named = matches!(
                map.get("type").and_then(Value::as_str),
                Some("record" | "enum" | "fixed" | "ref")
            );
            map.iter().find_map(|(key, value)| match key.as_str() {
                "name" if named => None,
                "size" | "precision" | "scale" => {
                    let integer =
                        value.is_i64() || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok());
                    (!integer).then_some(key.as_str())
                }
                "name" | "type" | "fields" | "symbols" | "items" | "values" | "order" => {
                    unrenderable_attribute(value).map(|inner| {
                        if inner.is_empty() {
                            key.as_str()
                        } else {
                            inner
                        }
                    })
                }
                _ => None,
            })
        }
        _ => Some(""),
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// Attribute order of both forms: the parsing canonical form's order, then the attributes it
/// drops, then anything else alphabetically.
const ATTRIBUTE_ORDER: [&str; 14] = [
    "name",
    "type",
    "fields",
    "symbols",
    "items",
    "values",
    "size",
    "logicalType",
    "precision",
    "scale",
    "default",
    "order",
    "aliases",
    "doc",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Identity,
    Normalized,
}

/// A JSON tree whose objects keep the order they were built in (serde_json's map may or may not,
/// depending on features other crates turn on).
enum Node {
    /// Emitted with object keys sorted: defaults and custom properties.
    Json(Value),
    Text(String),
    List(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn object(mut entries: Vec<(String, Node)>) -> Self {
        entries.sort_by(|(a, _), (b, _)| attribute_rank(a).cmp(&attribute_rank(b)).then(a.cmp(b)));
        Self::Object(entries)
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Json(value) => write_json(value, out),
            Self::Text(text) => write_string(text, out),
            Self::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Object(entries) => {
                out.push('{');
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn attribute_rank(key: &str) -> usize {
    ATTRIBUTE_ORDER
        .iter()
        .position(|known| *known == key)
        .unwrap_or(ATTRIBUTE_ORDER.len())
}

fn write_string(text: &str, out: &mut String) {
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::String(text) => write_string(text, out),
        other => out.push_str(&other.to_string()),
    }
}

/// A reference `name` qualified by `namespace` unless it is a primitive or already a full
/// name.
fn full_name(name: &str, namespace: Option<&str>) -> String {
    if PRIMITIVES.contains(&name) {
        name.to_owned()
    } else {
        defined_name(name, namespace)
    }
}

/// The full name a definition of `name` gets in `namespace`: qualified even when it is a
/// primitive's name (an enum called `string` in `a.b` is `a.b.string`, as apache-avro reads
/// it; a reference `string` is the primitive).
fn defined_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(space) if !space.is_empty() && !name.contains('.') => format!("{space}.{name}"),
        _ => name.to_owned(),
    }
}

fn namespace_of(full: &str) -> Option<&str> {
    full.rsplit_once('.').map(|(space, _)| space)
}

impl Form {
    fn render(self, schema: &Value) -> String {
        let mut out = String::new();
        self.schema(schema, None).write(&mut out);
        out
    }

    /// A schema in the context of the enclosing `namespace`.
    fn schema(self, schema: &Value, namespace: Option<&str>) -> Node {
        match schema {
            Value::String(name) => Node::Text(full_name(name, namespace)),
            Value::Array(branches) => Node::List(
                branches
                    .iter()
                    .map(|branch| self.schema(branch, namespace))
                    .collect(),
            ),
            Value::Object(map) => {
                let kind = map.get("type");
                // `{"type": X}` with nothing else (nothing else this form keeps) is X itself.
                let kept = map
                    .keys()
                    .filter(|key| self == Self::Identity || key.as_str() != "doc")
                    .count();
                if kept == 1
                    && let Some(inner) = kind
                {
                    return self.schema(inner, namespace);
                }
                match kind.and_then(Value::as_str) {
                    Some(kind @ ("record" | "error" | "enum" | "fixed")) => {
                        self.named(map, namespace, matches!(kind, "record" | "error"))
                    }
                    Some("array" | "map") => {
                        self.attributes(map, Kind::Other, |form, key, value| {
                            matches!(key, "items" | "values").then(|| form.schema(value, namespace))
                        })
                    }
                    // A primitive or a reference with attributes, e.g. a logical type.
                    _ => self.attributes(map, Kind::Other, |form, key, value| {
                        (key == "type").then(|| form.schema(value, namespace))
                    }),
                }
            }
            other => Node::Json(other.clone()),
        }
    }

    /// A record, enum or fixed: a full `name` replaces `name` + `namespace`. Only a record
    /// (`has_fields`) has fields; on an enum or a fixed, `fields` is a custom attribute, kept
    /// as written as apache-avro keeps it (names in it are not qualified).
    fn named(
        self,
        map: &serde_json::Map<String, Value>,
        namespace: Option<&str>,
        has_fields: bool,
    ) -> Node {
        let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
        let full = match map.get("namespace").and_then(Value::as_str) {
            Some(space) if !name.contains('.') => defined_name(name, Some(space)),
            _ => defined_name(name, namespace),
        };
        let inner = namespace_of(&full);
        let mut node = self.attributes(map, Kind::Named, |form, key, value| match key {
            "name" => Some(Node::Text(full.clone())),
            "aliases" => Some(form.aliases(value, |alias| full_name(alias, inner))),
            "fields" if has_fields && value.is_array() => Some(Node::List(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|field| form.field(field, inner))
                    .collect(),
            )),
            _ => None,
        });
        // A type in the null namespace nested in a namespaced one must say so, or reading the
        // form back would put it in the enclosing namespace.
        if inner.is_none()
            && namespace.is_some_and(|space| !space.is_empty())
            && let Node::Object(entries) = &mut node
        {
            entries.push(("namespace".to_owned(), Node::Text(String::new())));
        }
        node
    }

    fn field(self, field: &Value, namespace: Option<&str>) -> Node {
        let Some(map) = field.as_object() else {
            return Node::Json(field.clone());
        };
        self.attributes(map, Kind::Field, |form, key, value| match key {
            "type" => Some(form.schema(value, namespace)),
            "aliases" => Some(form.aliases(value, str::to_owned)),
            _ => None,
        })
    }

    /// A list of names, qualified (and in the normalized form sorted). Anything else, a list
    /// holding a number for one, is copied as written: apache-avro reads no aliases from it,
    /// and a number turned into a name could be one it refuses.
    fn aliases(self, aliases: &Value, qualify: impl Fn(&str) -> String) -> Node {
        let names: Option<Vec<String>> = aliases.as_array().and_then(|list| {
            list.iter()
                .map(|alias| alias.as_str().map(&qualify))
                .collect()
        });
        let Some(mut names) = names else {
            return Node::Json(aliases.clone());
        };
        if self == Self::Normalized {
            names.sort();
        }
        Node::List(names.into_iter().map(Node::Text).collect())
    }

    /// Every attribute of `map` in the form's order; `special` renders the attributes that hold
    /// schemas or names, the rest are copied (minus what the form drops).
    fn attributes(
        self,
        map: &serde_json::Map<String, Value>,
        kind: Kind,
        special: impl Fn(Self, &str, &Value) -> Option<Node>,
    ) -> Node {
        let entries = map
            .iter()
            .filter(|(key, value)| match key.as_str() {
                "doc" => self == Self::Identity,
                // Folded into the full name.
                "namespace" => kind != Kind::Named,
                // Ascending is what a field without `order` gets anyway.
                "order" => !(kind == Kind::Field && value.as_str() == Some("ascending")),
                _ => true,
            })
            .map(|(key, value)| {
                let node = special(self, key, value).unwrap_or_else(|| Node::Json(value.clone()));
                (key.clone(), node)
            })
            .collect();
        Node::object(entries)
    }
}

/// What a JSON object in a schema is, for the attributes that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Named,
    Field,
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> ParsedSchema {
        ParsedSchema::parse(text).unwrap()
    }

    const USER: &str = r#"{"type":"record","name":"User","namespace":"a.b","fields":[{"name":"id","type":"long"}]}"#;

    /// What registration relies on for a schema that parses (the `schema_parse` fuzz
    /// target's checks): its normalized form parses, is a fixed point, keeps the canonical
    /// form and is found again by its fingerprints.
    fn assert_normalizes(text: &str) {
        let parsed = parsed(text);
        let once = parsed
            .clone()
            .into_normalized()
            .unwrap_or_else(|e| panic!("{e}: {}", parsed.normalized));
        assert_eq!(once.text, once.normalized, "{text}");
        assert_eq!(once.canonical, parsed.canonical, "{text}");
        assert_eq!(
            once.normalized_fingerprint, parsed.normalized_fingerprint,
            "{text}"
        );
        assert_eq!(
            ParsedSchema::parse(&once.text).unwrap().fingerprint,
            once.fingerprint
        );
    }

    #[test]
    fn a_repeated_attribute_counts_once_as_its_last_value() {
        // Found by fuzzing: JSON with a key twice ("type", "doc") is read with the last value
        // winning, by apache-avro and by the forms alike.
        assert_normalizes(
            r#"{"type": "record", "doc": "first", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "second"}"#,
        );
        for text in [
            r#"{"type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "d"}"#,
            r#"{"type": {"type": "long"}, "doc": "d"}"#,
            r#"{"type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "d", "x": 1}"#,
            r#"{"type": "record", "name": "R", "fields": [{"name": "f", "type": {"type": {"type": "int"}, "doc": "d"}}]}"#,
        ] {
            assert_normalizes(text);
        }
    }

    #[test]
    fn whitespace_attribute_order_and_qualification_are_one_schema() {
        let variants = [
            r#"{ "fields": [ {"type": {"type": "long"}, "name": "id"} ], "name": "User", "namespace": "a.b", "type": "record" }"#,
            r#"{"type":"record","name":"a.b.User","fields":[{"name":"id","type":"long","order":"ascending"}]}"#,
        ];
        for variant in variants {
            assert_eq!(
                parsed(variant).fingerprint,
                parsed(USER).fingerprint,
                "{variant}"
            );
        }
        assert_eq!(
            parsed(USER).normalized,
            r#"{"name":"a.b.User","type":"record","fields":[{"name":"id","type":"long"}]}"#
        );
    }

    #[test]
    fn defaults_docs_aliases_and_logical_types_make_different_schemas() {
        let base =
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","default":1}]}"#;
        let variants = [
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","default":2}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","default":1,"aliases":["g"]}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"int","logicalType":"date"},"default":1}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","default":1,"order":"descending"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","default":1,"connect.name":"x"}]}"#,
        ];
        for variant in variants {
            assert_ne!(
                parsed(variant).fingerprint,
                parsed(base).fingerprint,
                "{variant}"
            );
            assert_ne!(
                parsed(variant).normalized_fingerprint,
                parsed(base).normalized_fingerprint,
                "{variant}"
            );
        }

        let documented = r#"{"type":"record","name":"R","doc":"a record","fields":[{"name":"f","type":"int","default":1,"doc":"a field"}]}"#;
        assert_ne!(parsed(documented).fingerprint, parsed(base).fingerprint);
        assert_eq!(
            parsed(documented).normalized_fingerprint,
            parsed(base).normalized_fingerprint
        );
    }

    #[test]
    fn attributes_apache_avro_cannot_render_are_refused_not_a_panic() {
        // The first was found by fuzzing (fuzz/, target schema_parse); each made apache-avro
        // 0.22 panic, the last one inside `Schema::parse_str`, where its message about the bad
        // default renders the field's type.
        let refused = [
            (
                r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","symbols":null}]}"#,
                "symbols",
            ),
            (
                r#"{"type":"record","name":"R","order":5,"fields":[]}"#,
                "order",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","size":"x"}]}"#,
                "size",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","items":[1]}]}"#,
                "items",
            ),
            (
                r#"{"type":"record","name":"R","fields":[{"name":"f","default":5,"type":{"type":"record","name":"S","fields":[{"name":"g","type":"int","values":true}]}}]}"#,
                "values",
            ),
        ];
        for (text, attribute) in refused {
            let error = ParsedSchema::parse(text).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidSchema(m) if m.contains(&format!("'{attribute}'"))),
                "{text}: {error:?}"
            );
        }
        // Custom attributes with those names are fine where they hold what Avro expects there,
        // and any value is fine in a default, a doc or an attribute of another name.
        for text in [
            r#"{"type":"record","name":"R","order":"x","fields":[{"name":"f","type":"int","symbols":["A"],"size":"16"}]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":{"type":"map","values":"int"},"default":{"size":1,"type":2},"x-size":[1]}]}"#,
        ] {
            assert!(ParsedSchema::parse(text).is_ok(), "{text}");
        }
    }

    #[test]
    fn normalized_form_is_a_fixed_point() {
        let texts = [
            USER,
            r#"{"type":"record","name":"Outer","namespace":"n","doc":"d","aliases":["Z","A"],"fields":[
                {"name":"inner","type":{"type":"record","name":"Inner","namespace":"","fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"],"default":"X"}}]}},
                {"name":"fixed","type":{"type":"fixed","name":"F","size":4}},
                {"name":"again","type":["null","F"],"default":null},
                {"name":"list","type":{"type":"array","items":"n.F"}},
                {"name":"map","type":{"type":"map","values":{"type":"string","avro.java.string":"String"}}}
            ]}"#,
            // A custom property holding a float that takes the full precision of an f64 to
            // print: read back to the same number, or the form would drift on each pass.
            r#"{"type":"fixed","name":"Money","size":17,"lqrcale":3333133333e+32}"#,
            // A `fields` that holds no list, on a type that has no fields: a custom attribute.
            r#"{"type":"fixed","name":"Money","size":4,"fields":"Money"}"#,
            r#"{"type":"fixed","name":"Money","namespace":"a.b","size":4,"fields":"Money"}"#,
            // Found by fuzzing: a list of fields on a fixed (or an enum) is a custom attribute
            // too, so the names in it stay as written, not qualified by the namespace.
            r#"{"type":"record","name":"Outer","namespace":"n","fields":[{"name":"inner","type":{"type":"fixed","name":"Inner","size":17,"fields":[{"name":"e","type":{"type":"enum","name":"E","symbols":["X"]}}]}}]}"#,
            r#"{"type":"enum","name":"E","namespace":"n","symbols":["X"],"fields":[{"name":"f","type":{"type":"fixed","name":"F","size":1}}]}"#,
            // Found by fuzzing: aliases that are not all names are copied as written (a
            // number in them was written as the name "3333", which apache-avro refuses).
            r#"{"type":"enum","name":"Status","namespace":"a.b","symbols":["OPEN"],"aliases":[3333,"State"]}"#,
            r#"{"type":"record","name":"R","fields":[{"name":"f","type":"int","aliases":["g",7]}]}"#,
            // A named type whose name is a primitive's, in a namespace.
            r#"{"type":"enum","name":"string","namespace":"a.b","symbols":["OPEN","VOID","PAID"],"default":"OPEN","aliases":["State"]}"#,
        ];
        for text in texts {
            let once = parsed(text).into_normalized().unwrap();
            assert_eq!(once.text, once.normalized);
            let twice = parsed(&once.text).into_normalized().unwrap();
            assert_eq!(twice.text, once.text);
            // Stored normalized text is found again by the identity fingerprint.
            assert_eq!(parsed(&once.text).fingerprint, once.fingerprint);
            // Avro still reads it as the same schema.
            assert_eq!(parsed(text).canonical, once.canonical, "{text}");
        }
    }
}
