//! The Confluent wire-format decoder on hostile bytes: the 5-byte header
//! (`codec::wire_schema_id`), then the Avro datum after it read with the newest local schema
//! of every record, as a consumer reads a record whose writer schema is one of ours. No
//! registry: the schemas are the ones compiled into the binary.
#![no_main]

use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use dhanman_schemas::{Catalog, codec};
use libfuzzer_sys::fuzz_target;

/// A reader for the newest version of each record, in name order.
static READERS: LazyLock<Vec<GenericDatumReader<'static>>> = LazyLock::new(|| {
    let catalog = Catalog::global();
    let mut names: Vec<&str> = catalog.all().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let record = catalog
                .latest(name)
                .expect("every name has a newest version");
            GenericDatumReader::builder(&record.schema)
                .build()
                .expect("a reader for every local schema")
        })
        .collect()
});

fuzz_target!(
    init: {
        apache_avro::util::max_allocation_bytes(codec::MAX_DECODE_ALLOCATION);
        LazyLock::force(&READERS);
    },
    |data: &[u8]| {
        if codec::wire_schema_id(data).is_err() {
            return;
        }
        for reader in READERS.iter() {
            let mut datum = &data[5..];
            let _ = reader.read_value(&mut datum);
        }
    }
);
