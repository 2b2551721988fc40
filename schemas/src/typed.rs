//! A record's Rust type read straight from its Avro value, without its JSON form in
//! between: a serde `Deserializer` over the value and the schema it was resolved to, which
//! shows each value as the JSON form would ([`crate::json::from_avro`]): decimals, UUIDs
//! and dates as their text, timestamps as milliseconds, records as maps, `["null", T]`
//! unions as options. The JSON form built every record's map of owned names and values
//! only for serde to take it apart again; a consumer decodes every record it reads.
//!
//! What the Avro value itself cannot give (a decimal wider than 128 bits, a date outside
//! the calendar, a value that does not match its schema) is an undecodable record, as from
//! the JSON form; what the Rust type refuses is an invalid one.

use apache_avro::Schema;
use apache_avro::types::Value;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::json::{Path, date_from_avro, decimal_from_avro};
use crate::{Error, Result};

mod datum;

pub use datum::{from_datum, readable};

/// `T` from `value`, an Avro value resolved to `schema`.
pub fn from_avro<T: DeserializeOwned>(value: &Value, schema: &Schema) -> Result<T> {
    T::deserialize(Avro {
        value,
        schema,
        path: Path::Root(""),
    })
    .map_err(Error::from)
}

/// Why a value could not be read: the value (`undecodable`) or the type.
#[derive(Debug)]
pub struct DeError {
    undecodable: bool,
    message: String,
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<M: std::fmt::Display>(message: M) -> Self {
        DeError {
            undecodable: false,
            message: message.to_string(),
        }
    }
}

impl From<Error> for DeError {
    /// An error of the value itself (the JSON form's conversion reports it as invalid).
    fn from(error: Error) -> Self {
        DeError {
            undecodable: true,
            message: match error {
                Error::Invalid(message) => message,
                other => other.to_string(),
            },
        }
    }
}

impl From<DeError> for Error {
    fn from(error: DeError) -> Self {
        if error.undecodable {
            Error::Undecodable(error.message)
        } else {
            Error::Invalid(error.message)
        }
    }
}

/// A value, the schema it was resolved to, and where it sits (for errors).
struct Avro<'de, 'p> {
    value: &'de Value,
    schema: &'de Schema,
    path: Path<'p>,
}

impl Avro<'_, '_> {
    fn mismatch(&self) -> DeError {
        crate::json::invalid(
            self.path,
            format!("value {:?} does not match {:?}", self.value, self.schema),
        )
        .into()
    }
}

impl<'de> de::Deserializer<'de> for Avro<'de, '_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.reads_as_null() {
            return visitor.visit_unit();
        }
        match (self.value, self.schema) {
            (Value::Boolean(b), _) => visitor.visit_bool(*b),
            (Value::Int(n), _) => visitor.visit_i64(i64::from(*n)),
            (Value::Long(n), _) | (Value::TimestampMillis(n), _) => visitor.visit_i64(*n),
            (Value::Float(n), _) => visitor.visit_f64(f64::from(*n)),
            (Value::Double(n), _) => visitor.visit_f64(*n),
            (Value::String(s), _) => visitor.visit_borrowed_str(s),
            (Value::Uuid(u), _) => {
                let mut text = uuid::Uuid::encode_buffer();
                visitor.visit_str(u.hyphenated().encode_lower(&mut text))
            }
            (Value::Date(days), _) => {
                visitor.visit_str(&date_from_avro(*days, self.path)?.to_string())
            }
            (Value::Decimal(d), Schema::Decimal(ds)) => {
                let amount = decimal_from_avro(d, ds.scale as u32, self.path)?;
                visitor.visit_str(&amount.to_string())
            }
            (Value::Union(..), Schema::Union(_)) => self.variant()?.deserialize_any(visitor),
            (Value::Array(items), Schema::Array(a)) => visitor.visit_seq(Items {
                items: items.iter().enumerate(),
                schema: &a.items,
                path: self.path,
            }),
            (Value::Record(fields), Schema::Record(r)) => visitor.visit_map(Fields {
                fields: fields.iter().zip(&r.fields),
                next: None,
                path: self.path,
            }),
            _ => Err(self.mismatch()),
        }
    }

    /// As the JSON form: null is none, anything else (a union's other branch) is some.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = match self.value {
            Value::Union(..) => self.variant()?,
            _ => self,
        };
        if value.reads_as_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(value)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        // As the JSON form: a string names a unit variant (an Avro enum has no JSON form).
        match self.value {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            _ => Err(self.mismatch()),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl<'de, 'p> Avro<'de, 'p> {
    /// Whether the JSON form holds null for this value: null, and the numbers JSON has not
    /// (NaN, the infinities).
    fn reads_as_null(&self) -> bool {
        match self.value {
            Value::Null => true,
            Value::Float(n) => !n.is_finite(),
            Value::Double(n) => !n.is_finite(),
            _ => false,
        }
    }

    /// A union's value as its branch.
    fn variant(self) -> Result<Avro<'de, 'p>, DeError> {
        let (Value::Union(i, inner), Schema::Union(u)) = (self.value, self.schema) else {
            return Err(self.mismatch());
        };
        let schema = u
            .variants()
            .get(*i as usize)
            .ok_or_else(|| crate::json::invalid(self.path, "union index out of range"))?;
        Ok(Avro {
            value: inner,
            schema,
            path: self.path,
        })
    }
}

struct Items<'de, 'p, I> {
    items: I,
    schema: &'de Schema,
    path: Path<'p>,
}

impl<'de, I: Iterator<Item = (usize, &'de Value)>> de::SeqAccess<'de> for Items<'de, '_, I> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        seed.deserialize(Avro {
            value,
            schema: self.schema,
            path: Path::Item(&self.path, i),
        })
        .map(Some)
    }
}

struct Fields<'de, 'p, I> {
    fields: I,
    next: Option<(&'de str, &'de Value, &'de Schema)>,
    path: Path<'p>,
}

impl<'de, I> de::MapAccess<'de> for Fields<'de, '_, I>
where
    I: Iterator<Item = (&'de (String, Value), &'de apache_avro::schema::RecordField)>,
{
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(((name, value), field)) = self.fields.next() else {
            return Ok(None);
        };
        self.next = Some((name, value, &field.schema));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (name, value, schema) = self
            .next
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("a value asked for before its key"))?;
        seed.deserialize(Avro {
            value,
            schema,
            path: Path::Field(&self.path, name),
        })
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;
    use uuid::Uuid;

    use crate::events::{Envelope, InvoiceCreated, Record};
    use crate::{Catalog, Error, Event, json};

    fn invoice() -> InvoiceCreated {
        InvoiceCreated {
            envelope: Envelope::new(Uuid::now_v7(), "corr", None),
            invoice_id: Uuid::now_v7(),
            customer_id: Uuid::now_v7(),
            invoice_number: "INV-7".into(),
            amount: "10.00".parse().unwrap(),
            currency: "INR".into(),
            issue_date: "2026-12-01".parse().unwrap(),
            due_date: "2026-12-15".parse().unwrap(),
            description: None,
            period: None,
            tax_amount: Some("1.80".parse().unwrap()),
        }
    }

    /// The invoice's Avro value with `field` set to `to` (inside its union if it has one).
    fn with(field: &str, to: Value) -> (Value, &'static apache_avro::Schema) {
        let schema = &Catalog::global()
            .latest(InvoiceCreated::NAME)
            .unwrap()
            .schema;
        let as_json = serde_json::to_value(invoice()).unwrap();
        let Value::Record(mut fields) = json::to_avro(&as_json, schema, "").unwrap() else {
            panic!("a record's value is a record");
        };
        let (_, value) = fields.iter_mut().find(|(name, _)| name == field).unwrap();
        *value = match value {
            Value::Union(i, _) => Value::Union(*i, Box::new(to)),
            _ => to,
        };
        (Value::Record(fields), schema)
    }

    /// Read straight from the value and through its JSON form, as the codec does each.
    fn both(value: &Value, schema: &apache_avro::Schema) -> (Error, Error) {
        let typed = Event::from_avro(InvoiceCreated::NAME, value, schema).unwrap_err();
        let through_json = json::from_avro(value, schema, "")
            .and_then(|json| Event::from_json(InvoiceCreated::NAME, json))
            .unwrap_err();
        (typed, through_json)
    }

    #[test]
    fn what_the_value_cannot_give_is_undecodable_with_the_json_forms_reason() {
        let wide = apache_avro::Decimal::from(vec![0x7F; 17]);
        for (field, to, reason) in [
            ("issue_date", Value::Date(i32::MAX), "out of range"),
            (
                "amount",
                Value::Decimal(wide.clone()),
                "wider than 128 bits",
            ),
            ("tax_amount", Value::Decimal(wide), "wider than 128 bits"),
            ("customer_id", Value::Array(Vec::new()), "does not match"),
        ] {
            let (value, schema) = with(field, to);
            let (typed, through_json) = both(&value, schema);
            let (Error::Undecodable(typed), Error::Invalid(through_json)) = (&typed, &through_json)
            else {
                panic!("{field}: {typed:?} / {through_json:?}");
            };
            assert_eq!(typed, through_json, "{field}");
            assert!(typed.contains(field) && typed.contains(reason), "{typed}");
        }
    }

    #[test]
    fn what_the_type_refuses_is_invalid_as_from_json() {
        let (value, schema) = with("event_id", Value::Uuid(Uuid::nil()));
        let (typed, through_json) = both(&value, schema);
        assert!(matches!(typed, Error::Invalid(_)), "{typed:?}");
        assert_eq!(typed.to_string(), through_json.to_string());
        assert!(typed.to_string().contains("event_id"), "{typed}");

        #[derive(Debug, serde::Deserialize)]
        struct Small {
            #[allow(dead_code)]
            n: u8,
        }
        let schema = apache_avro::Schema::parse_str(
            r#"{"type": "record", "name": "S", "fields": [{"name": "n", "type": "int"}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![("n".into(), Value::Int(300))]);
        let err = super::from_avro::<Small>(&value, &schema).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid(m) if m.contains("300")),
            "{err:?}"
        );
        let value = Value::Record(vec![("n".into(), Value::Int(200))]);
        assert_eq!(super::from_avro::<Small>(&value, &schema).unwrap().n, 200);
    }

    #[test]
    fn numbers_json_cannot_hold_read_as_its_null() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Measure {
            x: Option<f64>,
        }
        let schema = apache_avro::Schema::parse_str(
            r#"{"type": "record", "name": "M", "fields": [{"name": "x", "type": "double"}]}"#,
        )
        .unwrap();
        for (x, read) in [(f64::NAN, None), (f64::INFINITY, None), (1.5, Some(1.5))] {
            let value = Value::Record(vec![("x".into(), Value::Double(x))]);
            let through_json: Measure =
                serde_json::from_value(json::from_avro(&value, &schema, "").unwrap()).unwrap();
            assert_eq!(through_json, Measure { x: read });
            assert_eq!(
                super::from_avro::<Measure>(&value, &schema).unwrap(),
                through_json
            );
        }
    }
}
