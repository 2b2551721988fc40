//! Differential test of the registry's Avro compatibility checker against the reference:
//! Apache Avro's own checker (its Python port of Java's `SchemaCompatibility`, run by
//! `scripts/avro_oracle.py`), on hand-written cases (`corpus/`) and on random evolutions of the
//! project's contracts (`evolve`). Every verdict must be the same.

// Test code: a failed unwrap is a failed test, and what it prints is for the reader.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod corpus;
mod evolve;
mod oracle;

use dhanman_registry::{Incompatibility, reader_writer_incompatibilities};
use serde_json::Value;

use oracle::Verdict;

/// A reader/writer schema pair and where it comes from.
pub struct Pair {
    pub origin: String,
    pub reader: Value,
    pub writer: Value,
}

const EVOLUTION_SEED: u64 = 20_261_129;
const EVOLUTIONS: usize = 120;

#[test]
fn verdicts_match_the_reference_checker() {
    let hand_written = corpus::hand_written();
    let evolved = evolve::evolutions(EVOLUTION_SEED, EVOLUTIONS);
    assert!(
        hand_written.len() >= 150,
        "{} hand-written pairs",
        hand_written.len()
    );
    assert!(evolved.len() >= 200, "{} evolved pairs", evolved.len());
    let sources = [
        ("hand-written", hand_written.len()),
        ("evolved", evolved.len()),
    ];
    let pairs: Vec<Pair> = hand_written.into_iter().chain(evolved).collect();
    let verdicts = oracle::judge(&pairs);

    let mut mismatches = Vec::new();
    let mut rejected = Vec::new();
    let mut pathless = Vec::new();
    let mut split = [(0, 0); 2];
    let mut port_differs = 0;
    for (index, (pair, theirs)) in pairs.iter().zip(&verdicts).enumerate() {
        let source = usize::from(index >= sources[0].1);
        let (compatible, locations, messages) = match theirs {
            Verdict::Rejected { error } => {
                rejected.push(format!("{}\n  reference: {error}", describe(pair)));
                continue;
            }
            Verdict::Judged {
                compatible,
                locations,
                messages,
                port_differs: differs,
            } => {
                port_differs += usize::from(*differs);
                (*compatible, locations, messages)
            }
        };
        let counter = &mut split[source];
        if compatible {
            counter.0 += 1
        } else {
            counter.1 += 1
        }

        let ours =
            reader_writer_incompatibilities(&pair.reader.to_string(), &pair.writer.to_string());
        let agrees = matches!(&ours, Ok(found) if found.is_empty() == compatible);
        if !agrees {
            mismatches.push(format!(
                "{}\n  ours:   {}\n  theirs: {} {locations:?} {messages:?}",
                describe(pair),
                render(&ours),
                if compatible {
                    "compatible"
                } else {
                    "incompatible"
                },
            ));
        } else if let Ok(found) = &ours
            && !found.is_empty()
            && !found
                .iter()
                .any(|incompatibility| incompatibility.path.starts_with('/'))
        {
            pathless.push(format!("{}\n  ours: {}", describe(pair), render(&ours)));
        }
    }

    for ((source, count), (compatible, incompatible)) in sources.iter().zip(split) {
        eprintln!("{source}: {count} pairs, {compatible} compatible, {incompatible} incompatible");
    }
    eprintln!(
        "pairs where the unadjusted Python port differs from Java on aliases: {port_differs}"
    );

    let mut problems = String::new();
    for (found, what) in [
        (
            &rejected,
            "pair(s) the reference rejected (every pair must be valid Avro for both)",
        ),
        (&mismatches, "verdict(s) that differ from the reference"),
        (&pathless, "incompatible verdict(s) without a path"),
    ] {
        if !found.is_empty() {
            problems.push_str(&format!(
                "\n{} {what}:\n{}\n",
                found.len(),
                found.join("\n")
            ));
        }
    }
    assert!(problems.is_empty(), "of {} pairs:{problems}", pairs.len());
    // A checker that always answers the same must not pass.
    let (compatible, incompatible) = split
        .iter()
        .fold((0, 0), |(c, i), (sc, si)| (c + sc, i + si));
    assert!(
        compatible >= 80 && incompatible >= 80,
        "{compatible} compatible, {incompatible} incompatible"
    );
    assert!(pairs.len() >= 300, "{} pairs", pairs.len());
}

fn describe(pair: &Pair) -> String {
    format!(
        "{}\n  reader: {}\n  writer: {}",
        pair.origin, pair.reader, pair.writer
    )
}

fn render(ours: &dhanman_registry::Result<Vec<Incompatibility>>) -> String {
    match ours {
        Ok(found) if found.is_empty() => "compatible".to_owned(),
        Ok(found) => format!(
            "incompatible {:?}",
            found.iter().map(ToString::to_string).collect::<Vec<_>>()
        ),
        Err(error) => format!("error: {error}"),
    }
}
