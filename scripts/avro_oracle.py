#!/usr/bin/env python3
"""Reference verdicts for Avro reader/writer schema compatibility.

Reads JSON lines `{"reader": <schema>, "writer": <schema>}` on stdin (a schema is the JSON
value itself, not a string holding it) and writes one line per pair, in order:

    {"compatible": bool, "locations": [...], "messages": [...], "port_differs": bool}

or `{"error": "..."}` when either schema fails to parse. The checker is Apache Avro's Python
port of Java's `SchemaCompatibility` (`avro.compatibility.ReaderWriterCompatibilityChecker`),
run on schemas parsed by `avro.schema.parse`.

One adjustment makes it judge as Java does: Java resolves the aliases of a named type against
that type's namespace (alias `Old` of `ns.New` means `ns.Old`) before comparing them with the
writer's full name, while the Python port compares the aliases as written. The aliases are
qualified the Java way before checking; `port_differs` says whether the unadjusted port would
have answered otherwise, so that the caller can see how often the adjustment mattered.

Used by `registry/tests/compat` (the differential test of `dhanman-registry`'s checker).
"""

import json
import sys
import warnings

import avro.errors
import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType


def named_schemas(schema, seen):
    """Every named schema reachable from `schema`, each once (recursive types included)."""
    if id(schema) in seen:
        return
    seen.add(id(schema))
    if isinstance(schema, avro.schema.NamedSchema):
        yield schema
    if isinstance(schema, avro.schema.RecordSchema):
        for field in schema.fields:
            yield from named_schemas(field.type, seen)
    elif isinstance(schema, avro.schema.ArraySchema):
        yield from named_schemas(schema.items, seen)
    elif isinstance(schema, avro.schema.MapSchema):
        yield from named_schemas(schema.values, seen)
    elif isinstance(schema, avro.schema.UnionSchema):
        for branch in schema.schemas:
            yield from named_schemas(branch, seen)


def qualify_aliases_as_java_does(schema):
    for named in named_schemas(schema, set()):
        aliases = named.props.get("aliases")
        if not isinstance(aliases, list):
            continue
        namespace = named.namespace
        named.props["aliases"] = [
            alias if "." in alias or not namespace else f"{namespace}.{alias}" for alias in aliases
        ]


def check(reader, writer):
    return ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)


def is_compatible(result):
    return result.compatibility is SchemaCompatibilityType.compatible


def judge(pair):
    try:
        reader = avro.schema.parse(json.dumps(pair["reader"]))
        writer = avro.schema.parse(json.dumps(pair["writer"]))
    except Exception as error:  # any parse failure is reported, not raised
        return {"error": f"{type(error).__name__}: {error}"}
    port_compatible = is_compatible(check(reader, writer))
    qualify_aliases_as_java_does(reader)
    result = check(reader, writer)
    compatible = is_compatible(result)
    # The port keeps locations and messages as two sets, so they are reported apart.
    return {
        "compatible": compatible,
        "locations": [] if compatible else sorted(result.locations),
        "messages": [] if compatible else sorted(result.messages),
        "port_differs": compatible != port_compatible,
    }


def main():
    # Java ignores logical types it doesn't know or that are invalid, and so does the port; the
    # warning it prints for each is noise here.
    warnings.filterwarnings("ignore", category=avro.errors.IgnoredLogicalType)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(judge(json.loads(line))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
