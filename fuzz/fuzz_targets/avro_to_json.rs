//! The Avro-to-JSON bridge on hostile bytes: the datum after the 5-byte header read with every
//! local record schema (each version), turned into JSON (`json::from_avro`), an older version
//! resolved to the newest (`codec::resolve`, e.g. InvoiceCreated v1 -> v2), then typed and
//! validated (`Event::from_json`, `Event::validate`) as processors do.
#![no_main]

use std::sync::LazyLock;

use apache_avro::reader::datum::GenericDatumReader;
use dhanman_schemas::{Catalog, Event, RecordSchema, codec, json};
use libfuzzer_sys::fuzz_target;

struct Version {
    /// The version written with.
    writer: &'static RecordSchema,
    /// The newest version of the same record: what a consumer reads it as.
    latest: &'static RecordSchema,
    reader: GenericDatumReader<'static>,
}

/// Every local schema version, in name and version order.
static VERSIONS: LazyLock<Vec<Version>> = LazyLock::new(|| {
    let catalog = Catalog::global();
    let mut records: Vec<&'static RecordSchema> = catalog.all().collect();
    records.sort_unstable_by(|a, b| (&a.name, a.version).cmp(&(&b.name, b.version)));
    records
        .into_iter()
        .map(|writer| Version {
            writer,
            latest: catalog.latest(&writer.name).expect("a newest version"),
            reader: GenericDatumReader::builder(&writer.schema)
                .build()
                .expect("a reader for every local schema"),
        })
        .collect()
});

fuzz_target!(
    init: {
        apache_avro::util::max_allocation_bytes(codec::MAX_DECODE_ALLOCATION);
        let versions = LazyLock::force(&VERSIONS);
        assert!(
            versions.iter().any(|v| v.writer.version < v.latest.version),
            "the catalog has a record with two versions"
        );
    },
    |data: &[u8]| {
        if codec::wire_schema_id(data).is_err() {
            return;
        }
        for version in VERSIONS.iter() {
            let mut datum = &data[5..];
            let Ok(value) = version.reader.read_value(&mut datum) else {
                continue;
            };
            let as_written = json::from_avro(&value, &version.writer.schema, "");
            let as_read = if version.writer.version < version.latest.version {
                codec::resolve(&value, &version.writer.schema, &version.latest.schema)
            } else {
                as_written
            };
            let Ok(json) = as_read else {
                continue;
            };
            if let Ok(event) = Event::from_json(&version.latest.name, json) {
                // from_json validates: a typed event it returns passes validation.
                assert!(event.validate().is_ok(), "{event:?}");
                assert_eq!(event.name(), version.latest.name);
            }
        }
    }
);
