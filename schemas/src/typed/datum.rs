//! A record's Rust type read straight from its Avro datum, when the datum was written with
//! the schema it is read with (most records: the writer's schema is the reader's): no
//! value tree between the bytes and the type. Each value is shown to the type as
//! [`super::Avro`] shows the value apache-avro decodes from the same bytes, so the two
//! paths read a record alike, errors and their classes included, with one difference: a
//! datum cut short inside a string or before a union's index, which apache-avro reads as
//! nulls, is undecodable here.
//!
//! Hostile bytes cost no more than their own length: a length or an item count is never
//! allocated ahead, only checked against the bytes that are left.

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, RecordField, UuidSchema};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

use super::DeError;
use crate::json::{Path, date_from_avro, decimal_from_be_bytes};
use crate::{Error, Result};

/// `T` from `datum`, written with `schema` (which [`readable`] accepts).
pub fn from_datum<T: DeserializeOwned>(datum: &[u8], schema: &Schema) -> Result<T> {
    let mut input = datum;
    T::deserialize(Datum {
        input: &mut input,
        schema,
        path: Path::Root(""),
    })
    .map_err(Error::from)
}

/// Whether [`from_datum`] reads every value of `schema`: the kinds of the pipeline's
/// records (no maps, enums, fixed or named references; those take the value tree).
pub fn readable(schema: &Schema) -> bool {
    match schema {
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::String
        | Schema::Uuid(UuidSchema::String)
        | Schema::Date
        | Schema::TimestampMillis => true,
        Schema::Decimal(d) => matches!(d.inner, InnerDecimalSchema::Bytes),
        Schema::Array(a) => readable(&a.items),
        Schema::Union(u) => u.variants().iter().all(readable),
        Schema::Record(r) => r.fields.iter().all(|f| readable(&f.schema)),
        _ => false,
    }
}

/// A value of `schema` at the head of `input`, read as it is deserialized.
struct Datum<'a, 'de, 'p> {
    input: &'a mut &'de [u8],
    schema: &'de Schema,
    path: Path<'p>,
}

fn undecodable(path: Path<'_>, problem: impl std::fmt::Display) -> DeError {
    DeError {
        undecodable: true,
        message: format!("{path}: {problem}"),
    }
}

impl<'de> Datum<'_, 'de, '_> {
    fn take(&mut self, n: usize) -> Result<&'de [u8], DeError> {
        if n > self.input.len() {
            return Err(undecodable(self.path, "datum ends early"));
        }
        let (head, rest) = self.input.split_at(n);
        *self.input = rest;
        Ok(head)
    }

    /// Avro's zig-zag variable-length `long`.
    fn long(&mut self) -> Result<i64, DeError> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(undecodable(self.path, "a number longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i32, DeError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| undecodable(self.path, format!("int {n} out of range")))
    }

    /// A length, checked against the bytes left.
    fn length(&mut self) -> Result<usize, DeError> {
        let n = self.long()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.input.len())
            .ok_or_else(|| undecodable(self.path, format!("length {n} past the datum's end")))
    }

    fn bytes(&mut self) -> Result<&'de [u8], DeError> {
        let n = self.length()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'de str, DeError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|_| undecodable(self.path, "a string not UTF-8"))
    }

    /// A union's branch: its index, and the branch's schema.
    fn branch(&mut self) -> Result<&'de Schema, DeError> {
        let Schema::Union(u) = self.schema else {
            return Err(undecodable(self.path, "not a union"));
        };
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .and_then(|i| u.variants().get(i))
            .ok_or_else(|| undecodable(self.path, "union index out of range"))
    }
}

impl<'de> de::Deserializer<'de> for Datum<'_, 'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, DeError> {
        match self.schema {
            Schema::Null => visitor.visit_unit(),
            Schema::Boolean => match self.take(1)?[0] {
                0 => visitor.visit_bool(false),
                1 => visitor.visit_bool(true),
                b => Err(undecodable(self.path, format!("boolean byte {b}"))),
            },
            Schema::Int => visitor.visit_i64(i64::from(self.int()?)),
            Schema::Long | Schema::TimestampMillis => visitor.visit_i64(self.long()?),
            Schema::Float => {
                let n = f32::from_le_bytes(self.take(4)?.try_into().expect("four bytes"));
                finite(f64::from(n), visitor)
            }
            Schema::Double => {
                let n = f64::from_le_bytes(self.take(8)?.try_into().expect("eight bytes"));
                finite(n, visitor)
            }
            Schema::String => visitor.visit_borrowed_str(self.str()?),
            Schema::Uuid(_) => {
                let id: uuid::Uuid = self.str()?.parse().map_err(|e| undecodable(self.path, e))?;
                let mut text = uuid::Uuid::encode_buffer();
                visitor.visit_str(id.hyphenated().encode_lower(&mut text))
            }
            Schema::Date => {
                let days = self.int()?;
                visitor.visit_str(&date_from_avro(days, self.path)?.to_string())
            }
            Schema::Decimal(d) => {
                let bytes = self.bytes()?;
                if bytes.is_empty() {
                    // As apache-avro: a decimal has at least one byte.
                    return Err(undecodable(self.path, "a decimal of no bytes"));
                }
                let amount = decimal_from_be_bytes(bytes, d.scale as u32, self.path)?;
                visitor.visit_str(&amount.to_string())
            }
            // apache-avro reads a datum that ends where a union's index would start as the
            // union's null (a record cut after its last required field); so does this.
            Schema::Union(_) if self.input.is_empty() => visitor.visit_unit(),
            Schema::Union(_) => {
                let schema = self.branch()?;
                Datum { schema, ..self }.deserialize_any(visitor)
            }
            Schema::Array(a) => {
                let mut items = Items {
                    input: self.input,
                    schema: &a.items,
                    path: self.path,
                    left: 0,
                    index: 0,
                    done: false,
                };
                let value = visitor.visit_seq(&mut items)?;
                if items.done {
                    Ok(value)
                } else {
                    Err(undecodable(self.path, "array not read to its end"))
                }
            }
            Schema::Record(r) => {
                let mut fields = Fields {
                    input: self.input,
                    fields: r.fields.iter(),
                    next: None,
                    path: self.path,
                };
                let value = visitor.visit_map(&mut fields)?;
                if fields.fields.len() == 0 && fields.next.is_none() {
                    Ok(value)
                } else {
                    Err(undecodable(self.path, "record not read to its end"))
                }
            }
            other => Err(undecodable(self.path, format!("unsupported {other:?}"))),
        }
    }

    /// As the JSON form: null is none, anything else (a union's other branch) is some.
    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, DeError> {
        let schema = match self.schema {
            Schema::Union(_) if self.input.is_empty() => return visitor.visit_none(),
            Schema::Union(_) => self.branch()?,
            schema => schema,
        };
        match schema {
            Schema::Null => visitor.visit_none(),
            // A number JSON cannot hold reads as null: the value must be read to know.
            Schema::Float | Schema::Double => Datum { schema, ..self }.deserialize_any(visitor),
            _ => visitor.visit_some(Datum { schema, ..self }),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // As the JSON form: a string names a unit variant.
        match self.schema {
            Schema::String => {
                visitor.visit_enum(de::value::BorrowedStrDeserializer::new(self.str()?))
            }
            other => Err(undecodable(
                self.path,
                format!("an enum read from {other:?}"),
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// A float as the JSON form has it: NaN and the infinities are null.
fn finite<'de, V: Visitor<'de>>(n: f64, visitor: V) -> Result<V::Value, DeError> {
    if n.is_finite() {
        visitor.visit_f64(n)
    } else {
        visitor.visit_unit()
    }
}

/// An array's items, read block by block as they are asked for.
struct Items<'a, 'de, 'p> {
    input: &'a mut &'de [u8],
    schema: &'de Schema,
    path: Path<'p>,
    /// Items left in the current block.
    left: u64,
    index: usize,
    done: bool,
}

impl<'de> de::SeqAccess<'de> for &mut Items<'_, 'de, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.done {
            return Ok(None);
        }
        if self.left == 0 {
            let mut head = Datum {
                input: &mut *self.input,
                schema: self.schema,
                path: self.path,
            };
            let count = head.long()?;
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                head.long()?;
            }
            if count == 0 {
                self.done = true;
                return Ok(None);
            }
            self.left = count.unsigned_abs();
        }
        self.left -= 1;
        let i = self.index;
        self.index += 1;
        seed.deserialize(Datum {
            input: &mut *self.input,
            schema: self.schema,
            path: Path::Item(&self.path, i),
        })
        .map(Some)
    }
}

/// A record's fields, each read when its value is asked for, in the schema's order.
struct Fields<'a, 'de, 'p> {
    input: &'a mut &'de [u8],
    fields: std::slice::Iter<'de, RecordField>,
    next: Option<&'de RecordField>,
    path: Path<'p>,
}

impl<'de> de::MapAccess<'de> for &mut Fields<'_, 'de, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.next = Some(field);
        seed.deserialize(de::value::BorrowedStrDeserializer::new(&field.name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let field = self
            .next
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("a value asked for before its key"))?;
        seed.deserialize(Datum {
            input: &mut *self.input,
            schema: &field.schema,
            path: Path::Field(&self.path, &field.name),
        })
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;
    use uuid::Uuid;

    use crate::events::{Envelope, InvoiceCreated, LedgerEntryPosted, PostingLine, Record};
    use crate::{Catalog, Error, Event};

    fn invoice() -> InvoiceCreated {
        InvoiceCreated {
            envelope: Envelope::new(Uuid::now_v7(), "corr-é", Some("cause".into())),
            invoice_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            invoice_number: "INV-7".into(),
            amount: "0.01".parse().unwrap(),
            currency: "INR".into(),
            issue_date: "1969-12-31".parse().unwrap(),
            due_date: "2026-12-15".parse().unwrap(),
            description: Some("Maintenance".into()),
            period: None,
            tax_amount: Some("-99999999999999.99".parse().unwrap()),
        }
    }

    fn entry() -> LedgerEntryPosted {
        let line = |code: &str, debit: &str, credit: &str| PostingLine {
            account_code: code.into(),
            party_type: None,
            party_id: None,
            debit: debit.parse().unwrap(),
            credit: credit.parse().unwrap(),
        };
        LedgerEntryPosted {
            envelope: Envelope::new(Uuid::now_v7(), "corr", None),
            entry_id: Uuid::now_v7(),
            source_event_id: Uuid::now_v7(),
            reference_type: "invoice".into(),
            reference_id: Uuid::now_v7(),
            description: "Invoice INV-7".into(),
            currency: "INR".into(),
            lines: vec![line("1200", "10.00", "0.00"), line("4000", "0.00", "10.00")],
        }
    }

    /// The datum of a record, and its schema.
    fn datum<R: Record>(record: &R) -> (Vec<u8>, &'static apache_avro::Schema) {
        let schema = Catalog::global().latest(R::NAME).unwrap();
        let json = serde_json::to_value(record).unwrap();
        let mut out = Vec::new();
        crate::json::write_avro(&json, &schema.schema, "", &mut out).unwrap();
        (out, &schema.schema)
    }

    /// The record read through apache-avro's value, as the codec reads a record the first
    /// time it meets its schema; its class only when apache-avro cannot read the bytes.
    fn through_value(
        name: &str,
        bytes: &[u8],
        schema: &apache_avro::Schema,
    ) -> Result<Event, Error> {
        let mut input = bytes;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()
            .and_then(|r| r.read_value(&mut input))
            .map_err(|e| Error::Undecodable(e.to_string()))?;
        Event::from_avro(name, &value, schema)
    }

    /// Every cut and many changed bytes of two records: what is read straight from the
    /// bytes, or refused as what the type refuses, is exactly what apache-avro's value
    /// gives; what apache-avro cannot read is refused too. Only stricter: apache-avro reads
    /// a datum cut short in a string or before a union's index as nulls, which is refused
    /// here as undecodable.
    #[test]
    fn mangled_datums_read_as_through_the_value_tree_or_are_refused_alike() {
        let cases = [
            (InvoiceCreated::NAME, datum(&invoice())),
            (LedgerEntryPosted::NAME, datum(&entry())),
        ];
        let (mut stricter, mut read) = (0, 0);
        for (name, (bytes, schema)) in &cases {
            assert!(super::readable(schema), "{name}");
            let mut variants: Vec<Vec<u8>> =
                (0..=bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            for i in 0..bytes.len() {
                for b in [0x00, 0x01, 0x02, 0x7F, 0x80, 0xC3, 0xFF, bytes[i] ^ 0x01] {
                    let mut changed = bytes.clone();
                    changed[i] = b;
                    variants.push(changed);
                }
            }
            for bytes in &variants {
                let direct = Event::from_datum(name, bytes, schema);
                let value = through_value(name, bytes, schema);
                match (&direct, &value) {
                    (Err(Error::Undecodable(_)), Err(Error::Undecodable(_))) => {}
                    (Err(Error::Undecodable(_)), _) => stricter += 1,
                    (Ok(a), Ok(b)) => {
                        read += 1;
                        assert_eq!(a, b, "{name} {bytes:?}")
                    }
                    (Err(Error::Invalid(a)), Err(Error::Invalid(b))) => {
                        assert_eq!(a, b, "{name} {bytes:?}")
                    }
                    _ => panic!("{name} {bytes:?}: {direct:?} / {value:?}"),
                }
            }
        }
        assert!(stricter > 0, "the cuts apache-avro reads as nulls");
        assert!(
            read > 100,
            "changed bytes inside strings and numbers read: {read}"
        );
    }

    /// What the bytes hold but the books cannot (a date past chrono's calendar, a decimal
    /// wider than 128 bits) is refused with the value tree's own words; a length past the
    /// datum's end is refused without reserving it.
    #[test]
    fn values_the_books_cannot_hold_are_refused_with_the_same_reason() {
        let schema = &Catalog::global()
            .latest(InvoiceCreated::NAME)
            .unwrap()
            .schema;
        let json = serde_json::to_value(invoice()).unwrap();
        let Value::Record(fields) = crate::json::to_avro(&json, schema, "").unwrap() else {
            panic!("a record");
        };
        let wide = apache_avro::Decimal::from(vec![0x7F; 17]);
        for (field, to) in [
            ("due_date", Value::Date(i32::MAX)),
            ("amount", Value::Decimal(wide)),
        ] {
            let mut changed = fields.clone();
            changed.iter_mut().find(|(n, _)| n == field).unwrap().1 = to;
            let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
                .build()
                .and_then(|w| w.write_value_to_vec(Value::Record(changed)))
                .unwrap();
            let direct = Event::from_datum(InvoiceCreated::NAME, &bytes, schema).unwrap_err();
            let value = through_value(InvoiceCreated::NAME, &bytes, schema).unwrap_err();
            assert_eq!(direct.to_string(), value.to_string(), "{field}");
            assert!(
                matches!(direct, Error::Undecodable(ref m) if m.contains(field)),
                "{direct:?}"
            );
        }
        // The event id's length claims 256 MiB.
        let (mut bytes, _) = datum(&invoice());
        let mut claim = Vec::new();
        crate::json::write_avro(
            &serde_json::json!(256i64 << 20),
            &apache_avro::Schema::Long,
            "",
            &mut claim,
        )
        .unwrap();
        bytes.splice(0..1, claim);
        let refused = Event::from_datum(InvoiceCreated::NAME, &bytes, schema).unwrap_err();
        assert!(
            refused.to_string().contains("past the datum's end"),
            "{refused}"
        );
    }

    /// Arrays in blocks as other writers may cut them: a negative count followed by the
    /// block's size, and several blocks.
    #[test]
    fn arrays_are_read_block_by_block() {
        let (bytes, schema) = datum(&entry());
        let expected = Event::from_datum(LedgerEntryPosted::NAME, &bytes, schema).unwrap();
        let Event::LedgerEntryPosted(e) = &expected else {
            panic!("an entry");
        };
        let line_schema = match &schema {
            apache_avro::Schema::Record(r) => match &r.fields[r.lookup["lines"]].schema {
                apache_avro::Schema::Array(a) => a.items.as_ref().clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let line = |l: &PostingLine| {
            let mut out = Vec::new();
            crate::json::write_avro(
                &serde_json::to_value(l).unwrap(),
                &line_schema,
                "",
                &mut out,
            )
            .unwrap();
            out
        };
        let (first, second) = (line(&e.lines[0]), line(&e.lines[1]));
        // The array is the record's last field: 2 (zig-zag 4), both lines, 0.
        let head = bytes.len() - first.len() - second.len() - 2;
        assert_eq!(bytes[head], 4);
        let mut blocks = bytes[..head].to_vec();
        // -1 item of `first.len()` bytes, then 1 item, then the end.
        blocks.push(1);
        blocks.push((first.len() * 2) as u8);
        blocks.extend(&first);
        blocks.push(2);
        blocks.extend(&second);
        blocks.push(0);
        assert_eq!(
            Event::from_datum(LedgerEntryPosted::NAME, &blocks, schema).unwrap(),
            expected
        );
        assert_eq!(
            through_value(LedgerEntryPosted::NAME, &blocks, schema).unwrap(),
            expected
        );
    }
}
