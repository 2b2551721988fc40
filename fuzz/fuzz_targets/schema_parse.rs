//! The registry's schema parser on arbitrary UTF-8: `ParsedSchema::parse` (apache-avro's
//! parser, then the identity and normalized forms and their fingerprints), and for a schema
//! that parses, `into_normalized` (what `?normalize=true` stores) with the properties
//! registration relies on: the normalized form parses, is a fixed point, is found again by
//! its identity fingerprint and is the same schema to Avro (same canonical form).
#![no_main]

use dhanman_registry::ParsedSchema;
use dhanman_schemas::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        apache_avro::util::max_allocation_bytes(codec::MAX_DECODE_ALLOCATION);
    },
    |text: &str| {
        let Ok(parsed) = ParsedSchema::parse(text) else {
            return;
        };
        let once = match parsed.clone().into_normalized() {
            Ok(once) => once,
            Err(e) => panic!("normalized form of a valid schema does not parse: {e}\n{}", parsed.normalized),
        };
        assert_eq!(once.text, once.normalized, "normalized form is not a fixed point");
        assert_eq!(once.canonical, parsed.canonical, "normalizing changed the schema");
        assert_eq!(once.normalized_fingerprint, parsed.normalized_fingerprint);
        let again = ParsedSchema::parse(&once.text).expect("normalized text parses");
        assert_eq!(again.fingerprint, once.fingerprint);
    }
);
