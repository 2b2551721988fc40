//! The registry's compatibility checker on two arbitrary texts (the input split at its first
//! NUL byte): checked both ways and each against itself (`reader_writer_incompatibilities`,
//! which parses both), then at every level with `incompatibilities`, the second text as the
//! candidate (when registration's parser takes it) and the subject's stored versions
//! `[second, first]`: plain levels check against the first text, transitive ones both.
#![no_main]

use dhanman_registry::{
    CompatibilityLevel, ParsedSchema, incompatibilities, reader_writer_incompatibilities,
};
use dhanman_schemas::codec;
use libfuzzer_sys::fuzz_target;

const LEVELS: [CompatibilityLevel; 7] = [
    CompatibilityLevel::None,
    CompatibilityLevel::Backward,
    CompatibilityLevel::BackwardTransitive,
    CompatibilityLevel::Forward,
    CompatibilityLevel::ForwardTransitive,
    CompatibilityLevel::Full,
    CompatibilityLevel::FullTransitive,
];

fuzz_target!(
    init: {
        apache_avro::util::max_allocation_bytes(codec::MAX_DECODE_ALLOCATION);
    },
    |data: &[u8]| {
        let Some(split) = data.iter().position(|&b| b == 0) else {
            return;
        };
        let (Ok(first), Ok(second)) = (
            std::str::from_utf8(&data[..split]),
            std::str::from_utf8(&data[split + 1..]),
        ) else {
            return;
        };
        // Both ways; errors are fine (a text that is no schema), panics and hangs are not.
        for (reader, writer) in [(first, second), (second, first)] {
            let _ = reader_writer_incompatibilities(reader, writer);
        }
        // Every schema reads itself; only a check too deep to finish may say otherwise.
        for text in [first, second] {
            if let Ok(found) = reader_writer_incompatibilities(text, text) {
                assert!(
                    found.iter().all(|i| i.message.contains("too deep to check")),
                    "a schema cannot read itself: {found:?}"
                );
            }
        }
        // The candidate has passed registration's parser; the subject's versions are stored
        // texts, taken as they are.
        let Ok(candidate) = ParsedSchema::parse(second) else {
            return;
        };
        let previous = [second.to_owned(), first.to_owned()];
        for level in LEVELS {
            let _ = incompatibilities(level, &candidate, &previous);
        }
    }
);
