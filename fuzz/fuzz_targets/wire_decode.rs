//! The Confluent wire-format decoder on hostile bytes: the 5-byte header
//! (`codec::wire_schema_id`), then the Avro datum after it read with the newest local schema
//! of every record, as a consumer reads a record whose writer schema is one of ours: into
//! apache-avro's value, and straight into the record's type (`Event::from_datum`). No
//! registry: the schemas are the ones compiled into the binary.
#![no_main]

use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use dhanman_schemas::{Catalog, Event, RecordSchema, codec};
use libfuzzer_sys::fuzz_target;

/// The newest version of each record, in name order, with a reader for it.
static READERS: LazyLock<Vec<(&'static RecordSchema, GenericDatumReader<'static>)>> =
    LazyLock::new(|| {
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
                let reader = GenericDatumReader::builder(&record.schema)
                    .build()
                    .expect("a reader for every local schema");
                (record, reader)
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
        for (record, reader) in READERS.iter() {
            let mut datum = &data[5..];
            let _ = reader.read_value(&mut datum);
            let _ = Event::from_datum(&record.name, &data[5..], &record.schema);
        }
    }
);
