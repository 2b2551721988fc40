//! Avro schema compatibility with the semantics of Apache Avro Java's
//! `org.apache.avro.SchemaCompatibility`, which is what Confluent Schema Registry applies: the
//! same verdict on every reader/writer pair, with messages of our own that name the field and
//! the types. `tests/compat` checks the verdicts against Apache Avro's Python port of Java's
//! checker, adjusted where the port strays from Java: it compares a reader type's aliases as
//! written, Java qualifies them with the type's namespace first (`scripts/avro_oracle.py`).
//!
//! apache-avro (the Rust crate) has its own `schema_compatibility::SchemaCompatibility`, which
//! differs from Java's in these ways; this module follows Java in each:
//!
//! - Partial results. It answers `Ok(Compatibility::Partial)` where Java says incompatible:
//!   a reader enum without a default that lacks some (not all) of the writer's symbols, a
//!   writer union of which only some branches are readable, a reader union that reads only
//!   part of a writer union. A caller testing `is_ok()` accepts all of these.
//! - Aliases of named types. It compares the unqualified names of records, enums and fixed
//!   types and never looks at the reader's aliases, so renaming a type with an alias of its old
//!   name is rejected. Java accepts a writer type whose full name is one of the reader's
//!   aliases, an alias without a dot being in the reader type's namespace.
//! - Logical types. It compares them, Java ignores them and compares the underlying types: two
//!   decimals of different precision or scale are incompatible there and compatible in Java
//!   (`bytes` reads `bytes`); a uuid written as `fixed` reads as a uuid written as `string`
//!   there, not in Java (`string` cannot read `fixed`).
//! - References. A named type used a second time (or recursively) is a `Schema::Ref` there,
//!   which matches only another `Ref` of the same full name: a `Ref` against the inline
//!   definition of the same type (when the other schema defines it at another place) is a type
//!   mismatch, and two `Ref`s in different namespaces mismatch. Java resolves every reference
//!   to its definition and compares unqualified names.
//! - Reporting. It stops at the first incompatible field and says where only by field name;
//!   Java (and this module) reports every incompatibility, each with a JSON-pointer-like path
//!   into the reader schema (`/fields/2`, `/fields/3/type/items`, `/symbols`, `/size`, `/name`).
//!
//! Where this module departs from Java, it is never in a verdict Java gives:
//! - Java restarts the path at `/` inside unions and reports a reader union's missing branch at
//!   `<union>/<writer branch index>`; here the path goes on through unions (through the index
//!   of the reader branch tried, e.g. `/fields/4/type/1/fields/0`) and a missing branch is
//!   reported at the reader union itself.
//! - A reader union that cannot read a writer type also reports why its branch of the same
//!   type and name cannot, where Java says only that the union lacks the type.
//! - Java throws when a reader field's name and aliases match more than one writer field; here
//!   the field's own name wins, then its aliases in order (what the Python port does).
//! - Java overflows its stack on a check nested deeply enough (a long chain of references to
//!   named types); here a check deeper than 200 levels is an incompatibility, and a pair
//!   reports at most 50 incompatibilities (Java's lists can grow exponentially with types
//!   referred to many times).

mod checker;

pub use checker::MAX_COMPARISONS;
mod graph;

use std::fmt;

use crate::avro::ParsedSchema;
use crate::error::{Error, Result};
use graph::SchemaGraph;

/// Compatibility level as named by Confluent (`GET/PUT /config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatibilityLevel {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl CompatibilityLevel {
    /// What a registry with no stored configuration uses, same as Confluent.
    pub const DEFAULT: Self = Self::Backward;

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Case-insensitive, as Confluent accepts `"full"` as well as `"FULL"`.
    pub fn parse(level: &str) -> Result<Self> {
        let all = [
            Self::None,
            Self::Backward,
            Self::BackwardTransitive,
            Self::Forward,
            Self::ForwardTransitive,
            Self::Full,
            Self::FullTransitive,
        ];
        all.into_iter()
            .find(|candidate| candidate.as_str().eq_ignore_ascii_case(level))
            .ok_or_else(|| Error::InvalidCompatibilityLevel(level.to_owned()))
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `candidate` may not join a subject at `level`, given the subject's live versions
/// (`previous`, oldest first, as stored text). An empty list means compatible. Plain levels
/// check against the latest version only, transitive ones against every version (Confluent's
/// meaning). Each message starts with the offending path in the reader schema and says which
/// schema read which, e.g.
/// `/fields/2: reader has no default for field 'due_date', which the writer lacks (reader: the
/// new schema, writer: the existing schema)`.
///
/// Fails only when a schema does not parse ([`Error::InvalidSchema`]): a stored one, or the
/// candidate when it uses what Java's parser would not resolve (a type referred to by alias).
pub fn incompatibilities(
    level: CompatibilityLevel,
    candidate: &ParsedSchema,
    previous: &[String],
) -> Result<Vec<String>> {
    let (backward, forward) = match level {
        CompatibilityLevel::None => return Ok(Vec::new()),
        CompatibilityLevel::Backward | CompatibilityLevel::BackwardTransitive => (true, false),
        CompatibilityLevel::Forward | CompatibilityLevel::ForwardTransitive => (false, true),
        CompatibilityLevel::Full | CompatibilityLevel::FullTransitive => (true, true),
    };
    let Some(latest) = previous.len().checked_sub(1) else {
        return Ok(Vec::new());
    };
    let transitive = matches!(
        level,
        CompatibilityLevel::BackwardTransitive
            | CompatibilityLevel::ForwardTransitive
            | CompatibilityLevel::FullTransitive
    );
    let first = if transitive { 0 } else { latest };

    let candidate = parse(&candidate.text)?;
    let budget = checker::Budget::default();
    let mut reasons = Vec::new();
    // Newest first: the latest version's reasons are the most telling.
    for (index, text) in previous.iter().enumerate().skip(first).rev() {
        let earlier = parse(text)?;
        let version = match (latest, index == latest) {
            (0, _) => "the existing schema",
            (_, true) => "the latest existing schema",
            (_, false) => "an earlier existing schema",
        };
        if backward {
            for found in checker::check(&candidate, &earlier, &budget) {
                reasons.push(format!(
                    "{found} (reader: the new schema, writer: {version})"
                ));
            }
        }
        if forward {
            for found in checker::check(&earlier, &candidate, &budget) {
                reasons.push(format!(
                    "{found} (reader: {version}, writer: the new schema)"
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    reasons.retain(|reason| seen.insert(reason.clone()));
    Ok(reasons)
}

/// One reason why a reader schema cannot read data written with a writer schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// JSON-pointer-like location in the reader schema, `/` being the whole schema, as Java
    /// reports it: `/fields/2` (a field), `/fields/2/type/items`, `/values`, `/symbols`,
    /// `/size`, `/name`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why `reader` cannot read every datum written with `writer` (both Avro schema texts), with
/// the verdict of Java's `SchemaCompatibility.checkReaderWriterCompatibility`: an empty list
/// means compatible. Fails when either schema does not parse ([`Error::InvalidSchema`]).
pub fn reader_writer_incompatibilities(reader: &str, writer: &str) -> Result<Vec<Incompatibility>> {
    let budget = checker::Budget::default();
    Ok(checker::check(&parse(reader)?, &parse(writer)?, &budget))
}

/// Valid for apache-avro (what registration requires), then read the way Java reads it.
fn parse(text: &str) -> Result<SchemaGraph> {
    crate::avro::parse_avro(text)?;
    let json = serde_json::from_str(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
    SchemaGraph::parse(&json).map_err(Error::InvalidSchema)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Record `Invoice` with `fields`, each `(name, type JSON, default JSON or "")`.
    fn invoice(fields: &[(&str, &str, &str)]) -> String {
        let fields = fields
            .iter()
            .map(|(name, schema, default)| match *default {
                "" => format!(r#"{{"name":"{name}","type":{schema}}}"#),
                default => format!(r#"{{"name":"{name}","type":{schema},"default":{default}}}"#),
            })
            .collect::<Vec<_>>()
            .join(",");
        format!(
            r#"{{"type":"record","name":"Invoice","namespace":"dhanman.sales","fields":[{fields}]}}"#
        )
    }

    fn candidate(text: &str) -> ParsedSchema {
        ParsedSchema::parse(text).expect("valid schema")
    }

    fn check(reader: &str, writer: &str) -> Vec<Incompatibility> {
        reader_writer_incompatibilities(reader, writer).expect("valid schemas")
    }

    const ALL_LEVELS: [CompatibilityLevel; 7] = [
        CompatibilityLevel::None,
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
    ];

    #[test]
    fn no_previous_version_and_level_none_accept_anything() {
        let v1 = invoice(&[("id", r#""long""#, "")]);
        let unrelated = candidate(r#"{"type":"enum","name":"Color","symbols":["RED"]}"#);
        for level in ALL_LEVELS {
            assert_eq!(
                incompatibilities(level, &unrelated, &[]).unwrap(),
                Vec::<String>::new()
            );
        }
        let found = incompatibilities(CompatibilityLevel::None, &unrelated, &[v1]).unwrap();
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn backward_reads_the_previous_version_with_the_new_schema() {
        let v1 = [invoice(&[("id", r#""long""#, "")])];
        let with_default = candidate(&invoice(&[
            ("id", r#""long""#, ""),
            ("note", r#"["null","string"]"#, "null"),
        ]));
        let without_default = candidate(&invoice(&[
            ("id", r#""long""#, ""),
            ("due_date", r#""int""#, ""),
        ]));

        let accepted = incompatibilities(CompatibilityLevel::Backward, &with_default, &v1).unwrap();
        assert!(accepted.is_empty(), "{accepted:?}");
        let rejected =
            incompatibilities(CompatibilityLevel::Backward, &without_default, &v1).unwrap();
        assert_eq!(
            rejected,
            [
                "/fields/1: reader has no default for field 'due_date', which the writer lacks \
              (reader: the new schema, writer: the existing schema)"
            ]
        );
        // Old readers ignore the new field, so the same change is forward compatible.
        let forward =
            incompatibilities(CompatibilityLevel::Forward, &without_default, &v1).unwrap();
        assert!(forward.is_empty(), "{forward:?}");
    }

    #[test]
    fn forward_reads_the_new_schema_with_the_previous_version() {
        let v1 = [invoice(&[
            ("id", r#""long""#, ""),
            ("currency", r#""string""#, ""),
        ])];
        // Dropping a field old readers need, without a default there.
        let dropped = candidate(&invoice(&[("id", r#""long""#, "")]));

        assert!(
            incompatibilities(CompatibilityLevel::Backward, &dropped, &v1)
                .unwrap()
                .is_empty()
        );
        let forward = incompatibilities(CompatibilityLevel::Forward, &dropped, &v1).unwrap();
        assert_eq!(
            forward,
            [
                "/fields/1: reader has no default for field 'currency', which the writer lacks \
              (reader: the existing schema, writer: the new schema)"
            ]
        );
        let full = incompatibilities(CompatibilityLevel::Full, &dropped, &v1).unwrap();
        assert_eq!(full, forward);
    }

    #[test]
    fn promotions_go_one_way() {
        let v1 = [invoice(&[("amount", r#""int""#, "")])];
        let widened = candidate(&invoice(&[("amount", r#""long""#, "")]));
        assert!(
            incompatibilities(CompatibilityLevel::Backward, &widened, &v1)
                .unwrap()
                .is_empty()
        );
        let forward = incompatibilities(CompatibilityLevel::Forward, &widened, &v1).unwrap();
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert!(
            forward[0].starts_with(
                "/fields/0/type: field 'amount': reader type int cannot read writer type long"
            ),
            "{forward:?}"
        );
    }

    /// A record with a union of `named` fixed types in its first field and `more` fields of
    /// unions naming all of them again: every union against every other compares each
    /// branch with the ones before it.
    fn unions_of_many_named_types(named: usize, more: usize) -> String {
        let defined: Vec<String> = (0..named)
            .map(|i| format!(r#"{{"type":"fixed","name":"F{i}","size":1}}"#))
            .collect();
        let named_again: Vec<String> = (0..named).map(|i| format!(r#""F{i}""#)).collect();
        let mut fields = vec![format!(r#"{{"name":"f","type":[{}]}}"#, defined.join(","))];
        for j in 0..more {
            fields.push(format!(
                r#"{{"name":"g{j}","type":[{}]}}"#,
                named_again.join(",")
            ));
        }
        format!(
            r#"{{"type":"record","name":"Bomb","fields":[{}]}}"#,
            fields.join(",")
        )
    }

    #[test]
    fn a_judgement_past_its_comparisons_is_incompatible_not_endless() {
        // Small: judged in full, and the same schema is compatible with itself.
        let small = unions_of_many_named_types(20, 3);
        let found = incompatibilities(
            CompatibilityLevel::FullTransitive,
            &candidate(&small),
            std::slice::from_ref(&small),
        )
        .unwrap();
        assert!(found.is_empty(), "{found:?}");
        // Large: about 600 x 600 / 2 comparisons a union field, past the budget in the
        // first version already; the later versions cost nothing more.
        let large = unions_of_many_named_types(600, 6);
        let previous = vec![large.clone(); 13];
        let found = incompatibilities(
            CompatibilityLevel::FullTransitive,
            &candidate(&large),
            &previous,
        )
        .unwrap();
        assert!(
            found
                .iter()
                .any(|reason| reason.contains("too large to compare")),
            "{found:?}"
        );
    }

    #[test]
    fn plain_levels_check_the_latest_version_only_transitive_ones_all() {
        // v1 has no `note`; v2 adds it with a default; the candidate drops the default, which v2
        // (it has the field) can still be read with, v1 cannot.
        let v1 = invoice(&[("id", r#""long""#, "")]);
        let v2 = invoice(&[("id", r#""long""#, ""), ("note", r#""string""#, r#""""#)]);
        let v3 = candidate(&invoice(&[
            ("id", r#""long""#, ""),
            ("note", r#""string""#, ""),
        ]));
        let previous = [v1, v2];

        assert!(
            incompatibilities(CompatibilityLevel::Backward, &v3, &previous)
                .unwrap()
                .is_empty()
        );
        assert!(
            incompatibilities(CompatibilityLevel::Full, &v3, &previous)
                .unwrap()
                .is_empty()
        );
        for level in [
            CompatibilityLevel::BackwardTransitive,
            CompatibilityLevel::FullTransitive,
        ] {
            let found = incompatibilities(level, &v3, &previous).unwrap();
            assert_eq!(
                found,
                [
                    "/fields/1: reader has no default for field 'note', which the writer lacks \
                  (reader: the new schema, writer: an earlier existing schema)"
                ],
                "{level}"
            );
        }
        // Forward: every previous version reads the candidate (it has all their fields).
        assert!(
            incompatibilities(CompatibilityLevel::ForwardTransitive, &v3, &previous)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_stored_schema_that_no_longer_parses_is_an_error() {
        let v2 = candidate(&invoice(&[("id", r#""long""#, "")]));
        let broken =
            r#"{"type":"record","name":"Invoice","fields":[{"name":"id","type":"Missing"}]}"#;
        let error =
            incompatibilities(CompatibilityLevel::Backward, &v2, &[broken.to_owned()]).unwrap_err();
        assert!(matches!(error, Error::InvalidSchema(_)), "{error:?}");
        // Not looked at when the level doesn't need it.
        assert!(
            incompatibilities(CompatibilityLevel::None, &v2, &[broken.to_owned()])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_stored_schema_apache_avro_would_panic_on_is_an_error() {
        // Found with fuzzing (fuzz/, targets schema_parse and compatibility): apache-avro's
        // parser panicked on a bad default whose type has a custom attribute `values` that
        // holds no schema.
        let v2 = candidate(&invoice(&[("id", r#""long""#, "")]));
        let hostile = invoice(&[(
            "lines",
            r#"{"type":"record","name":"Line","fields":[{"name":"g","type":"int","values":true}]}"#,
            "5",
        )]);
        for level in [CompatibilityLevel::Backward, CompatibilityLevel::Forward] {
            let error = incompatibilities(level, &v2, std::slice::from_ref(&hostile)).unwrap_err();
            assert!(matches!(error, Error::InvalidSchema(_)), "{error:?}");
        }
        let error = reader_writer_incompatibilities(&hostile, &hostile).unwrap_err();
        assert!(matches!(error, Error::InvalidSchema(_)), "{error:?}");
    }

    #[test]
    fn paths_point_into_the_reader_schema() {
        let lines = |amount: &str| {
            invoice(&[(
                "lines",
                &format!(
                    r#"{{"type":"array","items":{{"type":"record","name":"Line","fields":[{{"name":"amount","type":{amount}}}]}}}}"#
                ),
                "",
            )])
        };
        let found = check(&lines(r#""int""#), &lines(r#""double""#));
        assert_eq!(
            found,
            [Incompatibility {
                path: "/fields/0/type/items/fields/0/type".to_owned(),
                message: "field 'lines[].amount': reader type int cannot read writer type double"
                    .to_owned(),
            }]
        );

        let status = |symbols: &str, default: &str| {
            format!(r#"{{"type":"enum","name":"Status","symbols":{symbols}{default}}}"#)
        };
        let found = check(
            &status(r#"["OPEN"]"#, ""),
            &status(r#"["OPEN","VOID","PAID"]"#, ""),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "/symbols");
        assert!(found[0].message.contains("[PAID, VOID]"), "{}", found[0]);
        assert!(
            check(
                &status(r#"["OPEN"]"#, r#","default":"OPEN""#),
                &status(r#"["OPEN","VOID"]"#, "")
            )
            .is_empty()
        );

        let fixed =
            |name: &str, size: u32| format!(r#"{{"type":"fixed","name":"{name}","size":{size}}}"#);
        let paths =
            |found: Vec<Incompatibility>| found.into_iter().map(|i| i.path).collect::<Vec<_>>();
        assert_eq!(
            paths(check(&fixed("Hash", 16), &fixed("Digest", 32))),
            ["/name", "/size"]
        );

        let map = |values: &str| format!(r#"{{"type":"map","values":{values}}}"#);
        assert_eq!(
            paths(check(&map(r#""string""#), &map(r#""long""#))),
            ["/values"]
        );
        assert!(check(&map(r#""string""#), &map(r#""bytes""#)).is_empty());
    }

    #[test]
    fn unions_need_every_writer_branch_readable() {
        let optional = r#"["null","string"]"#;
        assert!(check(optional, r#""string""#).is_empty());
        let found = check(r#""string""#, optional);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "/: reader type string cannot read writer type null"
        );

        let found = check(r#"["null","long"]"#, r#"["null","string"]"#);
        assert_eq!(
            found.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["/: reader union has no branch that can read writer type string"]
        );
    }

    #[test]
    fn named_types_match_by_unqualified_name_or_qualified_reader_alias() {
        let record = |name: &str, namespace: &str, aliases: &str| {
            format!(
                r#"{{"type":"record","name":"{name}","namespace":"{namespace}","aliases":{aliases},"fields":[]}}"#
            )
        };
        // Another namespace, same name: Java compares unqualified names.
        assert!(check(&record("Invoice", "a", "[]"), &record("Invoice", "b", "[]")).is_empty());
        // An alias without a dot is in the reader type's namespace.
        assert!(
            check(
                &record("Bill", "a", r#"["Invoice"]"#),
                &record("Invoice", "a", "[]")
            )
            .is_empty()
        );
        assert!(
            check(
                &record("Bill", "a", r#"["b.Invoice"]"#),
                &record("Invoice", "b", "[]")
            )
            .is_empty()
        );
        let found = check(
            &record("Bill", "a", r#"["Invoice"]"#),
            &record("Invoice", "b", "[]"),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/name");
        // The writer's aliases don't count.
        assert!(
            !check(
                &record("Invoice", "a", "[]"),
                &record("Bill", "a", r#"["Invoice"]"#)
            )
            .is_empty()
        );
    }

    #[test]
    fn recursive_types_terminate() {
        let list = |value: &str, extra: &str| {
            format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"value","type":"{value}"}},{{"name":"next","type":["null","Node"]}}{extra}]}}"#
            )
        };
        assert!(check(&list("long", ""), &list("int", "")).is_empty());
        let found = check(&list("int", ""), &list("long", ""));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/fields/0/type");
        let found = check(
            &list("long", r#",{"name":"label","type":"string"}"#),
            &list("long", ""),
        );
        assert_eq!(
            found.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["/fields/2: reader has no default for field 'label', which the writer lacks"]
        );
    }

    #[test]
    fn types_referred_to_many_times_do_not_multiply_the_report() {
        // Each level refers twice to the one below: 2^40 paths to the incompatible field.
        let chain = |base: &str| {
            let mut fields = vec![format!(
                r#"{{"name":"l0","type":{{"type":"record","name":"L0","fields":[{{"name":"v","type":"{base}"}}]}}}}"#
            )];
            for level in 1..=40 {
                let below = level - 1;
                fields.push(format!(
                    r#"{{"name":"l{level}","type":{{"type":"record","name":"L{level}","fields":[{{"name":"a","type":"L{below}"}},{{"name":"b","type":"L{below}"}}]}}}}"#
                ));
            }
            format!(
                r#"{{"type":"record","name":"Root","fields":[{}]}}"#,
                fields.join(",")
            )
        };
        let found = check(&chain("int"), &chain("long"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "/fields/0/type/fields/0/type");
    }

    #[test]
    fn too_deep_a_check_is_refused_not_a_stack_overflow() {
        // The chain of references T1 <- T2 <- ... is defined in fields the check skips (the
        // reader's have defaults and aren't in the writer), then walked from its far end.
        let schema = |prefix: &str| {
            let mut fields = vec![format!(
                r#"{{"name":"{prefix}1","type":["null",{{"type":"record","name":"T1","fields":[{{"name":"v","type":"int"}}]}}],"default":null}}"#
            )];
            for level in 2..=300 {
                let below = level - 1;
                fields.push(format!(
                    r#"{{"name":"{prefix}{level}","type":["null",{{"type":"record","name":"T{level}","fields":[{{"name":"next","type":"T{below}"}}]}}],"default":null}}"#
                ));
            }
            fields.push(r#"{"name":"far","type":"T300"}"#.to_owned());
            format!(
                r#"{{"type":"record","name":"Root","fields":[{}]}}"#,
                fields.join(",")
            )
        };
        let found = check(&schema("reader"), &schema("writer"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].message.contains("too deep to check"),
            "{}",
            found[0]
        );
    }
}
