//! Conversion between the JSON form of a record (what serde makes of our Rust types, what
//! the outbox stores, what operators read) and Avro values, guided by the schema. Written
//! once so that every record type shares the money, id and date rules.

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, RecordSchema};
use apache_avro::types::Value;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::Value as Json;

use crate::{Error, Result};

pub(crate) fn invalid(path: impl std::fmt::Display, problem: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{path}: {problem}"))
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date")
}

/// JSON → Avro value of `schema`. `path` names the field in error messages.
pub fn to_avro(json: &Json, schema: &Schema, path: &str) -> Result<Value> {
    Ok(match schema {
        Schema::Null => match json {
            Json::Null => Value::Null,
            _ => return Err(invalid(path, "expected null")),
        },
        Schema::Boolean => Value::Boolean(
            json.as_bool()
                .ok_or_else(|| invalid(path, "expected a boolean"))?,
        ),
        Schema::Int => {
            let n = json
                .as_i64()
                .ok_or_else(|| invalid(path, "expected an integer"))?;
            Value::Int(i32::try_from(n).map_err(|_| invalid(path, "integer out of range"))?)
        }
        Schema::Long => Value::Long(
            json.as_i64()
                .ok_or_else(|| invalid(path, "expected an integer"))?,
        ),
        Schema::Double => Value::Double(
            json.as_f64()
                .ok_or_else(|| invalid(path, "expected a number"))?,
        ),
        Schema::String => Value::String(as_str(json, path)?.to_string()),
        Schema::Uuid(_) => Value::Uuid(
            as_str(json, path)?
                .parse()
                .map_err(|_| invalid(path, "expected a UUID"))?,
        ),
        Schema::Date => {
            let date: NaiveDate = as_str(json, path)?
                .parse()
                .map_err(|_| invalid(path, "expected a date as YYYY-MM-DD"))?;
            let days = (date - epoch()).num_days();
            Value::Date(i32::try_from(days).map_err(|_| invalid(path, "date out of range"))?)
        }
        Schema::TimestampMillis => Value::TimestampMillis(match json {
            Json::Number(n) => n
                .as_i64()
                .ok_or_else(|| invalid(path, "expected milliseconds"))?,
            Json::String(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|_| invalid(path, "expected an RFC 3339 timestamp"))?
                .timestamp_millis(),
            _ => return Err(invalid(path, "expected a timestamp")),
        }),
        Schema::Decimal(d) => {
            if !matches!(d.inner, InnerDecimalSchema::Bytes) {
                return Err(invalid(path, "only bytes-backed decimals are supported"));
            }
            let amount = decimal_from_json(json, path)?;
            Value::Decimal(decimal_to_avro(amount, d.precision, d.scale, path)?)
        }
        Schema::Array(a) => {
            let items = json
                .as_array()
                .ok_or_else(|| invalid(path, "expected an array"))?;
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| to_avro(item, &a.items, &format!("{path}/{i}")))
                    .collect::<Result<_>>()?,
            )
        }
        Schema::Union(u) => {
            let variants = u.variants();
            if json.is_null() {
                let i = variants
                    .iter()
                    .position(|v| matches!(v, Schema::Null))
                    .ok_or_else(|| invalid(path, "must not be null"))?;
                Value::Union(i as u32, Box::new(Value::Null))
            } else {
                // Our unions are `["null", T]`: take the first branch that accepts the value.
                let mut last = None;
                for (i, variant) in variants.iter().enumerate() {
                    if matches!(variant, Schema::Null) {
                        continue;
                    }
                    match to_avro(json, variant, path) {
                        Ok(v) => return Ok(Value::Union(i as u32, Box::new(v))),
                        Err(e) => last = Some(e),
                    }
                }
                return Err(
                    last.unwrap_or_else(|| invalid(path, "no union branch accepts the value"))
                );
            }
        }
        Schema::Record(r) => record_to_avro(json, r, path)?,
        other => return Err(invalid(path, format!("unsupported schema type {other:?}"))),
    })
}

fn record_to_avro(json: &Json, record: &RecordSchema, path: &str) -> Result<Value> {
    let object = json
        .as_object()
        .ok_or_else(|| invalid(path, "expected an object"))?;
    let mut fields = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let field_path = if path.is_empty() {
            field.name.clone()
        } else {
            format!("{path}.{}", field.name)
        };
        let value = match object.get(&field.name) {
            Some(v) => to_avro(v, &field.schema, &field_path)?,
            None => match &field.default {
                Some(default) => to_avro(default, &field.schema, &field_path)?,
                None => return Err(invalid(&field_path, "is required")),
            },
        };
        fields.push((field.name.clone(), value));
    }
    Ok(Value::Record(fields))
}

fn as_str<'a>(json: &'a Json, path: &str) -> Result<&'a str> {
    json.as_str()
        .ok_or_else(|| invalid(path, "expected a string"))
}

fn decimal_from_json(json: &Json, path: &str) -> Result<Decimal> {
    match json {
        Json::String(s) => s
            .parse()
            .map_err(|_| invalid(path, "expected a decimal amount")),
        Json::Number(n) => n
            .to_string()
            .parse()
            .map_err(|_| invalid(path, "expected a decimal amount")),
        _ => Err(invalid(path, "expected a decimal amount")),
    }
}

/// A money amount into Avro's decimal: refuses rather than rounds, because a silently
/// rounded amount is a wrong book.
pub fn decimal_to_avro(
    amount: Decimal,
    precision: usize,
    scale: usize,
    path: &str,
) -> Result<apache_avro::Decimal> {
    let normalized = amount.normalize();
    if normalized.scale() as usize > scale {
        return Err(invalid(
            path,
            format!("has more than {scale} decimal places"),
        ));
    }
    let mut scaled = amount;
    scaled.rescale(scale as u32);
    let mantissa = scaled.mantissa();
    if mantissa.unsigned_abs() >= 10u128.pow(precision as u32) {
        return Err(invalid(path, format!("exceeds {precision} digits")));
    }
    Ok(apache_avro::Decimal::from(minimal_be_bytes(mantissa)))
}

/// Shortest big-endian two's complement form, as Avro writers produce it.
fn minimal_be_bytes(n: i128) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        let redundant = (b == 0x00 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    bytes[start..].to_vec()
}

/// An Avro decimal (big-endian two's complement) at `scale`; `path` names it in errors.
pub fn decimal_from_avro(
    d: &apache_avro::Decimal,
    scale: u32,
    path: impl std::fmt::Display + Copy,
) -> Result<Decimal> {
    let bytes = Vec::<u8>::try_from(d).map_err(|e| invalid(path, e))?;
    if bytes.len() > 16 {
        return Err(invalid(path, "decimal wider than 128 bits"));
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xFF
    } else {
        0x00
    };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(&bytes);
    Decimal::try_from_i128_with_scale(i128::from_be_bytes(wide), scale)
        .map_err(|e| invalid(path, e))
}

/// An Avro date (days from 1970-01-01); `path` names it in errors.
pub fn date_from_avro(days: i32, path: impl std::fmt::Display) -> Result<NaiveDate> {
    // Any 32-bit day count is valid Avro; chrono's calendar ends sooner.
    chrono::Duration::try_days(i64::from(days))
        .and_then(|d| epoch().checked_add_signed(d))
        .ok_or_else(|| invalid(path, format!("date {days} days from 1970 is out of range")))
}

/// Avro value (already resolved to `schema`) → JSON. `path` names the value in error
/// messages (its fields and items are named below it).
pub fn from_avro(value: &Value, schema: &Schema, path: &str) -> Result<Json> {
    from_avro_at(value, schema, Path::Root(path))
}

/// Where a value sits in the record: built as the conversion descends, written out only
/// for an error (`root.field/2.field`), so a value that converts costs no formatting.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root(&'a str),
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(root) => f.write_str(root),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent, i) => write!(f, "{parent}/{i}"),
        }
    }
}

fn from_avro_at(value: &Value, schema: &Schema, path: Path<'_>) -> Result<Json> {
    Ok(match (value, schema) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => Json::Bool(*b),
        (Value::Int(n), _) => Json::from(*n),
        (Value::Long(n), _) => Json::from(*n),
        (Value::Float(n), _) => Json::from(*n),
        (Value::Double(n), _) => Json::from(*n),
        (Value::String(s), _) => Json::String(s.clone()),
        (Value::Uuid(u), _) => Json::String(u.to_string()),
        (Value::Date(days), _) => Json::String(date_from_avro(*days, path)?.to_string()),
        (Value::TimestampMillis(ms), _) => Json::from(*ms),
        (Value::Decimal(d), Schema::Decimal(ds)) => {
            Json::String(decimal_from_avro(d, ds.scale as u32, path)?.to_string())
        }
        (Value::Union(i, inner), Schema::Union(u)) => {
            let variant = u
                .variants()
                .get(*i as usize)
                .ok_or_else(|| invalid(path, "union index out of range"))?;
            from_avro_at(inner, variant, path)?
        }
        (Value::Array(items), Schema::Array(a)) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| from_avro_at(item, &a.items, Path::Item(&path, i)))
                .collect::<Result<_>>()?,
        ),
        (Value::Record(fields), Schema::Record(r)) => {
            let mut object = serde_json::Map::with_capacity(fields.len());
            for ((name, v), field) in fields.iter().zip(&r.fields) {
                object.insert(
                    name.clone(),
                    from_avro_at(v, &field.schema, Path::Field(&path, name))?,
                );
            }
            Json::Object(object)
        }
        (other, schema) => {
            return Err(invalid(
                path,
                format!("value {other:?} does not match {schema:?}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_bytes_round_trip_signs_and_sizes() {
        for n in [
            0i128,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            12_345,
            -99_999_999_999_999_999,
        ] {
            let d = apache_avro::Decimal::from(minimal_be_bytes(n));
            let back = decimal_from_avro(&d, 2, "x").unwrap();
            assert_eq!(back.mantissa(), n, "{n}");
        }
        assert_eq!(minimal_be_bytes(128), vec![0x00, 0x80]);
        assert_eq!(minimal_be_bytes(-1), vec![0xFF]);
    }

    #[test]
    fn money_is_refused_rather_than_rounded() {
        let ok = decimal_to_avro("10.5".parse().unwrap(), 18, 2, "amount").unwrap();
        assert_eq!(
            decimal_from_avro(&ok, 2, "amount").unwrap().to_string(),
            "10.50"
        );
        let err = decimal_to_avro("10.005".parse().unwrap(), 18, 2, "amount").unwrap_err();
        assert!(
            err.to_string()
                .contains("amount: has more than 2 decimal places"),
            "{err}"
        );
        let err =
            decimal_to_avro("10000000000000000".parse().unwrap(), 18, 2, "amount").unwrap_err();
        assert!(err.to_string().contains("exceeds 18 digits"), "{err}");
        // Trailing zeros beyond the scale are not extra precision.
        assert!(decimal_to_avro("1.2500".parse().unwrap(), 18, 2, "amount").is_ok());
    }
}
