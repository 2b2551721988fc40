//! The Avro-to-JSON bridge on hostile bytes: the datum after the 5-byte header read with every
//! local record schema (each version), turned into JSON (`json::from_avro`), an older version
//! resolved to the newest (`codec::resolve`, e.g. InvoiceCreated v1 -> v2), then typed and
//! validated (`Event::from_json`, `Event::validate`); a newest version's value is also read
//! straight into its type (`Event::from_avro`, as processors read it), which must give the
//! same event or refuse where the JSON form refuses.
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
            let newest = version.writer.version == version.latest.version;
            let as_read = if newest {
                as_written
            } else {
                codec::resolve(&value, &version.writer.schema, &version.latest.schema)
            };
            let event = as_read.and_then(|json| Event::from_json(&version.latest.name, json));
            if newest {
                // Read straight from the value, as consumers read the newest version: the
                // same event, or a refusal where the JSON form refuses.
                let typed = Event::from_avro(&version.latest.name, &value, &version.writer.schema);
                assert_eq!(typed.as_ref().ok(), event.as_ref().ok(), "{typed:?} / {event:?}");
            }
            if let Ok(event) = event {
                // from_json validates: a typed event it returns passes validation.
                assert!(event.validate().is_ok(), "{event:?}");
                assert_eq!(event.name(), version.latest.name);
            }
        }
    }
);
