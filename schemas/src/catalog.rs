//! The local schemas, compiled into the binary from `schemas/avro/`.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::Schema;

use crate::{Error, Result, topics};

/// One version of one record type, with the topic it travels on.
#[derive(Debug)]
pub struct RecordSchema {
    /// Full Avro name, e.g. `dhanman.sales.InvoiceCreated`.
    pub name: String,
    /// Our own version counter for the record (1, 2, ...), not the registry's.
    pub version: u32,
    pub topic: &'static str,
    /// The `.avsc` text as written in the repository.
    pub text: &'static str,
    pub schema: Schema,
    /// The same schema as serde_avro_fast reads it, parsed on first use ([`RecordSchema::datum`]).
    fast: OnceLock<std::result::Result<serde_avro_fast::Schema, String>>,
}

impl RecordSchema {
    pub fn subject(&self) -> String {
        topics::subject(self.topic, &self.name)
    }

    /// `value` as its Avro datum under this schema (the bytes a framed record carries after
    /// its five-byte header), serialized straight from the value: the same bytes as its
    /// JSON form through [`crate::json::to_avro`] and apache-avro's writer, without the
    /// JSON tree and the Avro value tree in between (`codec::tests` compare them for every
    /// record type). A `date` field is refused (its Rust form is text): such a record is kept
    /// as JSON.
    pub fn datum<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let schema = self
            .fast
            .get_or_init(|| self.text.parse().map_err(|e| format!("{e}")))
            .as_ref()
            .map_err(|reason| Error::Schema {
                name: self.name.clone(),
                reason: reason.clone(),
            })?;
        serde_avro_fast::to_datum_vec(
            value,
            &mut serde_avro_fast::ser::SerializerConfig::new(schema),
        )
        .map_err(|e| Error::Invalid(format!("{}: {e}", self.name)))
    }

    /// A datum of this schema ([`RecordSchema::datum`]) in its JSON form.
    pub fn datum_json(&self, datum: &[u8]) -> Result<serde_json::Value> {
        let mut bytes = datum;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&self.schema)
            .build()
            .and_then(|reader| reader.read_value(&mut bytes))
            .map_err(|e| Error::Undecodable(format!("{}: {e}", self.name)))?;
        crate::json::from_avro(&value, &self.schema, "")
    }
}

/// (file, version, topic): the one table that ties files to topics.
const FILES: &[(&str, u32, &str)] = &[
    (
        include_str!("../avro/sales/InvoiceCreated.avsc"),
        1,
        topics::INVOICES,
    ),
    (
        include_str!("../avro/sales/InvoiceCreated.v2.avsc"),
        2,
        topics::INVOICES,
    ),
    (
        include_str!("../avro/sales/InvoiceVoided.avsc"),
        1,
        topics::INVOICES,
    ),
    (
        include_str!("../avro/sales/PaymentReceived.avsc"),
        1,
        topics::PAYMENTS,
    ),
    (
        include_str!("../avro/sales/PaymentFailed.avsc"),
        1,
        topics::PAYMENTS,
    ),
    (
        include_str!("../avro/purchase/POSubmitted.avsc"),
        1,
        topics::PURCHASE_ORDERS,
    ),
    (
        include_str!("../avro/purchase/POApproved.avsc"),
        1,
        topics::PURCHASE_ORDERS,
    ),
    (
        include_str!("../avro/purchase/PORejected.avsc"),
        1,
        topics::PURCHASE_ORDERS,
    ),
    (
        include_str!("../avro/purchase/BillCreated.avsc"),
        1,
        topics::BILLS,
    ),
    (
        include_str!("../avro/payroll/SalaryPosted.avsc"),
        1,
        topics::SALARIES,
    ),
    (
        include_str!("../avro/common/UserCreated.avsc"),
        1,
        topics::USERS,
    ),
    (
        include_str!("../avro/notification/SendInvoiceEmail.avsc"),
        1,
        topics::NOTIFICATION_COMMANDS,
    ),
    (
        include_str!("../avro/notification/SendInvoiceEmail.v2.avsc"),
        2,
        topics::NOTIFICATION_COMMANDS,
    ),
    (
        include_str!("../avro/notification/SendPaymentReminder.avsc"),
        1,
        topics::NOTIFICATION_COMMANDS,
    ),
    (
        include_str!("../avro/notification/SendApprovalRequest.avsc"),
        1,
        topics::NOTIFICATION_COMMANDS,
    ),
    (
        include_str!("../avro/notification/SendPaymentReceipt.avsc"),
        1,
        topics::NOTIFICATION_COMMANDS,
    ),
    (
        include_str!("../avro/ledger/LedgerEntryPosted.avsc"),
        1,
        topics::LEDGER_ENTRIES,
    ),
];

/// All local schemas, by full name and version.
#[derive(Debug)]
pub struct Catalog {
    records: HashMap<(String, u32), RecordSchema>,
    latest: HashMap<String, u32>,
}

impl Catalog {
    /// The catalog compiled into this binary. Parsing happens once; a broken file is a
    /// bug caught by this crate's tests, so it panics rather than limping on.
    pub fn global() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG
            .get_or_init(|| Catalog::load().expect("the schemas compiled into dhanman are valid"))
    }

    fn load() -> Result<Self> {
        let mut records = HashMap::new();
        let mut latest: HashMap<String, u32> = HashMap::new();
        for (text, version, topic) in FILES {
            let schema = Schema::parse_str(text).map_err(|e| Error::Schema {
                name: text.chars().take(80).collect(),
                reason: e.to_string(),
            })?;
            let name = match &schema {
                Schema::Record(r) => r.name.fullname(None),
                _ => {
                    return Err(Error::Schema {
                        name: text.chars().take(80).collect(),
                        reason: "top-level schema must be a record".into(),
                    });
                }
            };
            let entry = latest.entry(name.clone()).or_default();
            *entry = (*entry).max(*version);
            records.insert(
                (name.clone(), *version),
                RecordSchema {
                    name,
                    version: *version,
                    topic,
                    text,
                    schema,
                    fast: OnceLock::new(),
                },
            );
        }
        Ok(Catalog { records, latest })
    }

    pub fn get(&self, name: &str, version: u32) -> Option<&RecordSchema> {
        self.records.get(&(name.to_string(), version))
    }

    /// One local schema version, or why there is none.
    pub fn local(&self, name: &str, version: u32) -> Result<&RecordSchema> {
        self.get(name, version)
            .ok_or_else(|| Error::Invalid(format!("no local schema {name} v{version}")))
    }

    /// `record` as its Avro datum under the version it is written with
    /// ([`RecordSchema::datum`]).
    pub fn datum<R: crate::events::Record>(&self, record: &R) -> Result<Vec<u8>> {
        self.local(R::NAME, R::WRITE_VERSION)?.datum(record)
    }

    /// The newest local version: what this binary reads every version of a record as.
    pub fn latest(&self, name: &str) -> Option<&RecordSchema> {
        let version = *self.latest.get(name)?;
        self.get(name, version)
    }

    pub fn all(&self) -> impl Iterator<Item = &RecordSchema> {
        self.records.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_parses_and_invoice_created_has_two_versions() {
        let catalog = Catalog::load().unwrap();
        assert_eq!(catalog.all().count(), FILES.len());
        let v2 = catalog.latest("dhanman.sales.InvoiceCreated").unwrap();
        assert_eq!(v2.version, 2);
        assert!(catalog.get("dhanman.sales.InvoiceCreated", 1).is_some());
        assert_eq!(
            v2.subject(),
            "dhanman.sales.invoices-dhanman.sales.InvoiceCreated"
        );
    }

    #[test]
    fn every_record_carries_the_envelope() {
        for record in Catalog::load().unwrap().all() {
            let Schema::Record(r) = &record.schema else {
                panic!("{} is not a record", record.name)
            };
            let names: Vec<&str> = r.fields.iter().take(5).map(|f| f.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "event_id",
                    "occurred_at",
                    "organization_id",
                    "correlation_id",
                    "causation_id"
                ],
                "{}",
                record.name
            );
        }
    }
}
