//! Random evolutions of the project's own contracts (`schemas/avro/**/*.avsc`): the changes
//! people make to a schema, in and against the rules (fields added and removed with and
//! without defaults, types changed along and against promotions, unions, enum symbols, renames
//! with and without aliases, logical types), one to three per evolution. Deterministic for a
//! seed. Each evolution gives two pairs: evolved reading original, original reading evolved.

use std::path::{Path, PathBuf};

use dhanman_registry::ParsedSchema;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::Pair;
use crate::oracle::workspace_root;

pub fn evolutions(seed: u64, count: usize) -> Vec<Pair> {
    let contracts = contracts();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut pairs = Vec::with_capacity(2 * count);
    let mut attempts = 0;
    while pairs.len() < 2 * count {
        attempts += 1;
        assert!(
            attempts < 50 * count,
            "the generator keeps producing invalid schemas"
        );
        let (file, contract) = contracts.choose(&mut rng).expect("contracts");
        let mut original = contract.clone();
        let mut steps = Vec::new();
        steps.extend(enrich(&mut original, &mut rng));
        let mut evolved = original.clone();
        let wanted = rng.random_range(1..=3);
        let mut changes = Vec::new();
        for _ in 0..10 {
            if changes.len() == wanted {
                break;
            }
            changes.extend(mutate(&mut evolved, &mut rng));
        }
        if evolved == original || !valid(&original) || !valid(&evolved) {
            continue;
        }
        steps.push(format!("then {}", changes.join(", ")));
        let origin = format!("{file} evolution {}: {}", pairs.len() / 2, steps.join("; "));
        pairs.push(Pair {
            origin: format!("{origin} (evolved reads original)"),
            reader: evolved.clone(),
            writer: original.clone(),
        });
        pairs.push(Pair {
            origin: format!("{origin} (original reads evolved)"),
            reader: original,
            writer: evolved,
        });
    }
    pairs
}

/// Every `.avsc` under `schemas/avro`, sorted by path.
fn contracts() -> Vec<(String, Value)> {
    let root = workspace_root().join("schemas/avro");
    let mut files = Vec::new();
    collect_avsc(&root, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .avsc under {}", root.display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string();
            (name, schema)
        })
        .collect()
}

fn collect_avsc(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_avsc(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "avsc") {
            files.push(path);
        }
    }
}

fn valid(schema: &Value) -> bool {
    ParsedSchema::parse(&schema.to_string()).is_ok()
}

/// The contracts have no enum, fixed, map or recursion; often give the original one, on both
/// sides, so that the changes can reach them.
fn enrich(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let own_name = schema["name"].as_str().unwrap_or_default().to_owned();
    let (field, what) = match rng.random_range(0..8) {
        0 | 1 => {
            let mut status =
                json!({"type": "enum", "name": "Status", "symbols": ["DRAFT", "POSTED", "VOID"]});
            if rng.random_bool(0.4) {
                status["default"] = json!("DRAFT");
            }
            (json!({"name": "status", "type": status}), "an enum field")
        }
        2 => (
            json!({"name": "checksum", "type": {"type": "fixed", "name": "Checksum", "size": 16}}),
            "a fixed field",
        ),
        3 => (
            json!({"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}}),
            "a map field",
        ),
        4 => (
            json!({"name": "previous", "type": ["null", own_name], "default": null}),
            "a recursive field",
        ),
        _ => return None,
    };
    fields_mut(schema, "").push(field);
    Some(format!("with {what}"))
}

/// One random change, described; `None` when the chosen kind had nothing to apply to.
fn mutate(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    match rng.random_range(0..17) {
        0 | 1 => add_field(schema, rng),
        2 | 3 => remove_field(schema, rng),
        4 => toggle_default(schema, rng),
        5..=7 => retype(schema, rng),
        8 => wrap_in_union(schema, rng),
        9 => unwrap_union(schema, rng),
        10 => change_union_branches(schema, rng),
        11 => rename_field(schema, rng),
        12 => rename_named_type(schema, rng),
        13 => change_namespace(schema, rng),
        14 => change_logical_type(schema, rng),
        15 => change_enum(schema, rng),
        _ => change_fixed(schema, rng),
    }
}

fn add_field(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let record = records(schema).choose(rng)?.clone();
    let types = [
        json!("string"),
        json!("long"),
        json!("int"),
        json!("boolean"),
        json!(["null", "string"]),
    ];
    let kind = types.choose(rng)?.clone();
    let with_default = rng.random_bool(0.5);
    let fields = fields_mut(schema, &record);
    let name = format!("added_{}", fields.len());
    let mut field = json!({"name": name, "type": kind});
    if with_default {
        field["default"] = default_for(&field["type"]);
    }
    let at = rng.random_range(0..=fields.len());
    fields.insert(at, field);
    Some(format!(
        "add field '{name}' {} a default at {}",
        if with_default { "with" } else { "without" },
        shown(&record)
    ))
}

fn remove_field(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let (record, index) = fields(schema).choose(rng)?.clone();
    let removed = fields_mut(schema, &record).remove(index);
    Some(format!(
        "remove field '{}' ({} default) at {}",
        removed["name"].as_str().unwrap_or_default(),
        if removed.get("default").is_some() {
            "had a"
        } else {
            "no"
        },
        shown(&record)
    ))
}

fn toggle_default(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let (record, index) = fields(schema).choose(rng)?.clone();
    let field = &mut fields_mut(schema, &record)[index];
    let name = field["name"].as_str().unwrap_or_default().to_owned();
    let object = field.as_object_mut()?;
    if object.remove("default").is_some() {
        return Some(format!("drop the default of '{name}'"));
    }
    let default = default_for(&object["type"]);
    object.insert("default".to_owned(), default);
    Some(format!("give '{name}' a default"))
}

/// A primitive (possibly with a logical type) replaced by another, along the promotions or not.
fn retype(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let positions: Vec<String> = type_positions(schema)
        .into_iter()
        .filter(|position| primitive_of(schema.pointer(position).expect("position")).is_some())
        .collect();
    let position = positions.choose(rng)?.clone();
    let from = primitive_of(schema.pointer(&position)?)?;
    let along: &[&str] = match from {
        "int" => &["long", "float", "double"],
        "long" => &["float", "double"],
        "float" => &["double"],
        "string" => &["bytes"],
        "bytes" => &["string"],
        _ => &[],
    };
    let others: Vec<&str> = PRIMITIVES.into_iter().filter(|to| *to != from).collect();
    let to = match along.choose(rng) {
        Some(to) if rng.random_bool(0.5) => *to,
        _ => *others.choose(rng)?,
    };
    *schema.pointer_mut(&position)? = json!(to);
    fix_default(schema, &position);
    Some(format!("retype {position} from {from} to {to}"))
}

fn wrap_in_union(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let (record, index) = fields(schema)
        .into_iter()
        .filter(|(record, index)| !fields_of(schema, record)[*index]["type"].is_array())
        .collect::<Vec<_>>()
        .choose(rng)?
        .clone();
    let field = &mut fields_mut(schema, &record)[index];
    let kind = field["type"].take();
    let name = field["name"].as_str().unwrap_or_default().to_owned();
    // A default must stay valid: null first when there is none, else the type first.
    if field.get("default").is_some() {
        field["type"] = json!([kind, "null"]);
        Some(format!("make '{name}' [type, null]"))
    } else {
        field["type"] = json!(["null", kind]);
        field["default"] = Value::Null;
        Some(format!("make '{name}' optional"))
    }
}

fn unwrap_union(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let (record, index) = fields(schema)
        .into_iter()
        .filter(|(record, index)| {
            fields_of(schema, record)[*index]["type"]
                .as_array()
                .is_some_and(|branches| branches.len() == 2 && branches.contains(&json!("null")))
        })
        .collect::<Vec<_>>()
        .choose(rng)?
        .clone();
    let field = fields_mut(schema, &record)[index].as_object_mut()?;
    let branches = field["type"].as_array()?.clone();
    let kept = branches.into_iter().find(|branch| branch != "null")?;
    field.insert("type".to_owned(), kept);
    field.remove("default");
    Some(format!(
        "make '{}' required",
        field["name"].as_str().unwrap_or_default()
    ))
}

fn change_union_branches(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let unions: Vec<String> = type_positions(schema)
        .into_iter()
        .filter(|position| schema.pointer(position).is_some_and(Value::is_array))
        .collect();
    let position = unions.choose(rng)?.clone();
    let branches = schema.pointer_mut(&position)?.as_array_mut()?;
    if branches.len() > 1 && rng.random_bool(0.4) {
        // Not the first: a default matches the first branch.
        let removed = branches.remove(rng.random_range(1..branches.len()));
        return Some(format!("remove branch {removed} from {position}"));
    }
    let candidates: Vec<Value> = ["long", "int", "string", "boolean", "double", "bytes"]
        .into_iter()
        .map(Value::from)
        .filter(|candidate| !branches.contains(candidate))
        .collect();
    let added = candidates.choose(rng)?.clone();
    branches.push(added.clone());
    Some(format!("add branch {added} to {position}"))
}

fn rename_field(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let (record, index) = fields(schema).choose(rng)?.clone();
    let field = &mut fields_mut(schema, &record)[index];
    let old = field["name"].as_str()?.to_owned();
    field["name"] = json!(format!("{old}_v2"));
    if rng.random_bool(0.6) {
        field["aliases"] = json!([old]);
        Some(format!("rename field '{old}' keeping an alias"))
    } else {
        Some(format!("rename field '{old}' without an alias"))
    }
}

/// A record, enum or fixed renamed, with its old name as an alias (qualified, unqualified) or
/// not; references to it (a recursive field) follow the rename.
fn rename_named_type(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let named = named_types(schema, &["record", "enum", "fixed"]);
    let position = named.choose(rng)?.clone();
    let namespace = namespace_at(schema, &position);
    let old = schema.pointer(&position)?["name"].as_str()?.to_owned();
    let new = format!("{old}V2");
    let full = |name: &str| match &namespace {
        Some(namespace) if !name.contains('.') => format!("{namespace}.{name}"),
        _ => name.to_owned(),
    };
    for reference in type_positions(schema) {
        if let Some(Value::String(name)) = schema.pointer_mut(&reference)
            && (*name == old || *name == full(&old))
        {
            *name = new.clone();
        }
    }
    let alias = match rng.random_range(0..3) {
        0 => None,
        1 => Some(old.clone()),
        _ => Some(full(&old)),
    };
    let object = schema.pointer_mut(&position)?;
    object["name"] = json!(new);
    let at = shown(&position);
    match alias {
        Some(alias) => {
            object["aliases"] = json!([alias]);
            Some(format!("rename {at} '{old}' with alias '{alias}'"))
        }
        None => Some(format!("rename {at} '{old}' without an alias")),
    }
}

/// A position as the descriptions show it, `/` for the root.
fn shown(position: &str) -> &str {
    if position.is_empty() { "/" } else { position }
}

fn change_namespace(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let object = schema.as_object_mut()?;
    if rng.random_bool(0.5) {
        object.insert("namespace".to_owned(), json!("dhanman.evolved"));
        Some("move to namespace dhanman.evolved".to_owned())
    } else {
        object
            .remove("namespace")
            .map(|_| "drop the namespace".to_owned())
    }
}

fn change_logical_type(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let positions: Vec<String> = type_positions(schema)
        .into_iter()
        .filter(|position| {
            schema
                .pointer(position)
                .is_some_and(|kind| kind.get("logicalType").is_some())
        })
        .collect();
    let position = positions.choose(rng)?.clone();
    let kind = schema.pointer_mut(&position)?;
    let logical = kind["logicalType"].as_str()?.to_owned();
    let change = match (logical.as_str(), rng.random_range(0..2)) {
        (_, 0) => {
            *kind = kind["type"].clone();
            format!("drop logical type {logical} at {position}")
        }
        ("decimal", _) => {
            kind["precision"] = json!(20);
            kind["scale"] = json!(4);
            format!("decimal(20,4) at {position}")
        }
        ("timestamp-millis", _) => {
            kind["logicalType"] = json!("timestamp-micros");
            format!("timestamp-micros at {position}")
        }
        ("date", _) => {
            *kind = json!({"type": "long", "logicalType": "timestamp-millis"});
            format!("date to timestamp-millis at {position}")
        }
        _ => {
            *kind = json!({"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2});
            format!("{logical} to decimal at {position}")
        }
    };
    fix_default(schema, &position);
    Some(change)
}

fn change_enum(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let position = named_types(schema, &["enum"]).choose(rng)?.clone();
    let object = schema.pointer_mut(&position)?.as_object_mut()?;
    let symbols = object.get_mut("symbols")?.as_array_mut()?;
    match rng.random_range(0..4) {
        0 => {
            symbols.push(json!(format!("ADDED_{}", symbols.len())));
            Some(format!("add a symbol to {position}"))
        }
        1 if symbols.len() > 1 => {
            let removed = symbols.remove(rng.random_range(0..symbols.len()));
            // An enum default must stay one of the symbols.
            if object.get("default") == Some(&removed) {
                object.remove("default");
            }
            Some(format!("remove symbol {removed} from {position}"))
        }
        2 => {
            let default = symbols.choose(rng)?.clone();
            object.insert("default".to_owned(), default.clone());
            Some(format!("enum default {default} at {position}"))
        }
        _ => object
            .remove("default")
            .map(|_| format!("drop the enum default at {position}")),
    }
}

fn change_fixed(schema: &mut Value, rng: &mut StdRng) -> Option<String> {
    let position = named_types(schema, &["fixed"]).choose(rng)?.clone();
    let size = [8, 16, 32].choose(rng)?;
    schema.pointer_mut(&position)?["size"] = json!(size);
    Some(format!("fixed size {size} at {position}"))
}

/// After a type change, a field default that no longer fits is replaced by one that does.
fn fix_default(schema: &mut Value, position: &str) {
    let Some(field_position) = position.strip_suffix("/type") else {
        return;
    };
    let Some(field) = schema
        .pointer_mut(field_position)
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    if field.contains_key("default") {
        let default = default_for(&field["type"]);
        field.insert("default".to_owned(), default);
    }
}

/// A default valid for `kind` (for a union: for its first branch).
fn default_for(kind: &Value) -> Value {
    match kind {
        Value::Array(branches) => branches.first().map(default_for).unwrap_or(Value::Null),
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("record") => json!({}),
            Some("array") => json!([]),
            Some("map") => json!({}),
            Some("enum") => object["symbols"][0].clone(),
            Some("fixed") => json!("\u{0}".repeat(object["size"].as_u64().unwrap_or(0) as usize)),
            Some(primitive) => default_for(&json!(primitive)),
            None => Value::Null,
        },
        Value::String(primitive) => match primitive.as_str() {
            "boolean" => json!(false),
            "int" | "long" => json!(0),
            "float" | "double" => json!(0.0),
            "bytes" | "string" => json!(""),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The primitive type at a type position, if it is one (with or without a logical type).
fn primitive_of(kind: &Value) -> Option<&'static str> {
    let name = match kind {
        Value::String(name) => name.as_str(),
        Value::Object(object) => object.get("type")?.as_str()?,
        _ => return None,
    };
    PRIMITIVES.into_iter().find(|primitive| *primitive == name)
}

/// JSON pointers of every schema position: the root, field types, items, values, union
/// branches.
fn type_positions(schema: &Value) -> Vec<String> {
    let mut positions = Vec::new();
    walk(schema, String::new(), &mut positions);
    positions.retain(|position| !position.is_empty());
    positions
}

fn walk(schema: &Value, position: String, out: &mut Vec<String>) {
    match schema {
        Value::Array(branches) => {
            for (index, branch) in branches.iter().enumerate() {
                walk(branch, format!("{position}/{index}"), out);
            }
        }
        Value::Object(object) => {
            if let Some(Value::Array(fields)) = object.get("fields") {
                for (index, field) in fields.iter().enumerate() {
                    walk(
                        &field["type"],
                        format!("{position}/fields/{index}/type"),
                        out,
                    );
                }
            }
            for key in ["items", "values"] {
                if let Some(inner) = object.get(key) {
                    walk(inner, format!("{position}/{key}"), out);
                }
            }
        }
        _ => {}
    }
    out.push(position);
}

/// Pointers of the named types of these kinds (the root is `""`).
fn named_types(schema: &Value, kinds: &[&str]) -> Vec<String> {
    let mut positions = type_positions(schema);
    positions.push(String::new());
    positions
        .into_iter()
        .filter(|position| {
            schema
                .pointer(position)
                .and_then(|kind| kind.get("type"))
                .and_then(Value::as_str)
                .is_some_and(|kind| kinds.contains(&kind))
        })
        .collect()
}

fn records(schema: &Value) -> Vec<String> {
    named_types(schema, &["record"])
}

fn fields(schema: &Value) -> Vec<(String, usize)> {
    records(schema)
        .into_iter()
        .flat_map(|record| {
            let count = fields_of(schema, &record).len();
            (0..count).map(move |index| (record.clone(), index))
        })
        .collect()
}

fn fields_of<'a>(schema: &'a Value, record: &str) -> &'a Vec<Value> {
    schema
        .pointer(record)
        .and_then(|record| record["fields"].as_array())
        .expect("a record position")
}

fn fields_mut<'a>(schema: &'a mut Value, record: &str) -> &'a mut Vec<Value> {
    schema
        .pointer_mut(record)
        .and_then(|record| record["fields"].as_array_mut())
        .expect("a record position")
}

/// The namespace a named type at `position` is in: its own, or the nearest enclosing one.
fn namespace_at(schema: &Value, position: &str) -> Option<String> {
    let mut prefix = position.to_owned();
    loop {
        if let Some(object) = schema.pointer(&prefix).and_then(Value::as_object)
            && object
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|kind| ["record", "enum", "fixed"].contains(&kind))
        {
            let name = object["name"].as_str().unwrap_or_default();
            if let Some((namespace, _)) = name.rsplit_once('.') {
                return Some(namespace.to_owned());
            }
            if let Some(namespace) = object.get("namespace").and_then(Value::as_str) {
                return Some(namespace.to_owned()).filter(|namespace| !namespace.is_empty());
            }
        }
        let (parent, _) = prefix.rsplit_once('/')?;
        prefix = parent.to_owned();
    }
}
