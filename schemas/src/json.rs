//! Conversion between the JSON form of a record (what serde makes of our Rust types, what
//! the outbox stores, what operators read) and Avro values, guided by the schema. Written
//! once so that every record type shares the money, id and date rules.

use apache_avro::Schema;
use apache_avro::schema::{
    DecimalSchema, InnerDecimalSchema, RecordField, RecordSchema, UnionSchema,
};
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
    value_at(json, schema, Path::Root(path))
}

fn value_at(json: &Json, schema: &Schema, path: Path<'_>) -> Result<Value> {
    Ok(match schema {
        Schema::Null => null(json, path).map(|()| Value::Null)?,
        Schema::Boolean => Value::Boolean(boolean(json, path)?),
        Schema::Int => Value::Int(int(json, path)?),
        Schema::Long => Value::Long(long(json, path)?),
        Schema::Double => Value::Double(double(json, path)?),
        Schema::String => Value::String(as_str(json, path)?.to_string()),
        Schema::Uuid(_) => Value::Uuid(uuid(json, path)?),
        Schema::Date => Value::Date(date_days(json, path)?),
        Schema::TimestampMillis => Value::TimestampMillis(timestamp_millis(json, path)?),
        Schema::Decimal(d) => {
            Value::Decimal(apache_avro::Decimal::from(decimal_bytes(json, d, path)?))
        }
        Schema::Array(a) => Value::Array(
            array(json, path)?
                .iter()
                .enumerate()
                .map(|(i, item)| value_at(item, &a.items, Path::Item(&path, i)))
                .collect::<Result<_>>()?,
        ),
        Schema::Union(u) => {
            let mut value = None;
            let i = union_branch(json, u, path, |_, variant| {
                value = Some(value_at(json, variant, path)?);
                Ok(())
            })?;
            Value::Union(i as u32, Box::new(value.unwrap_or(Value::Null)))
        }
        Schema::Record(r) => {
            let mut fields = Vec::with_capacity(r.fields.len());
            record_fields(json, r, path, |field, value, field_path| {
                fields.push((
                    field.name.clone(),
                    value_at(value, &field.schema, field_path)?,
                ));
                Ok(())
            })?;
            Value::Record(fields)
        }
        other => return Err(unsupported(other, path)),
    })
}

/// JSON → the Avro datum of `schema`, appended to `out`: the bytes [`to_avro`]'s value
/// takes in apache-avro's writer, written as the JSON is walked, with no value tree in
/// between (the relay encodes every row the API writes this way). On an error `out` may
/// hold part of the datum.
pub fn write_avro(json: &Json, schema: &Schema, path: &str, out: &mut Vec<u8>) -> Result<()> {
    write_at(json, schema, Path::Root(path), out)
}

fn write_at(json: &Json, schema: &Schema, path: Path<'_>, out: &mut Vec<u8>) -> Result<()> {
    match schema {
        Schema::Null => null(json, path)?,
        Schema::Boolean => out.push(u8::from(boolean(json, path)?)),
        Schema::Int => varint(i64::from(int(json, path)?), out),
        Schema::Long => varint(long(json, path)?, out),
        Schema::Double => out.extend_from_slice(&double(json, path)?.to_le_bytes()),
        Schema::String => length_delimited(as_str(json, path)?.as_bytes(), out),
        Schema::Uuid(_) => {
            let mut text = uuid::Uuid::encode_buffer();
            length_delimited(
                uuid(json, path)?
                    .hyphenated()
                    .encode_lower(&mut text)
                    .as_bytes(),
                out,
            );
        }
        Schema::Date => varint(i64::from(date_days(json, path)?), out),
        Schema::TimestampMillis => varint(timestamp_millis(json, path)?, out),
        Schema::Decimal(d) => length_delimited(&decimal_bytes(json, d, path)?, out),
        Schema::Array(a) => {
            let items = array(json, path)?;
            if !items.is_empty() {
                varint(items.len() as i64, out);
                for (i, item) in items.iter().enumerate() {
                    write_at(item, &a.items, Path::Item(&path, i), out)?;
                }
            }
            out.push(0);
        }
        Schema::Union(u) => {
            // Each branch tried is written after its index, and taken back if it fails.
            let mark = out.len();
            let i = union_branch(json, u, path, |i, variant| {
                out.truncate(mark);
                varint(i as i64, out);
                write_at(json, variant, path, out)
            })?;
            if json.is_null() {
                varint(i as i64, out);
            }
        }
        Schema::Record(r) => record_fields(json, r, path, |field, value, field_path| {
            write_at(value, &field.schema, field_path, out)
        })?,
        other => return Err(unsupported(other, path)),
    }
    Ok(())
}

/// Avro's zig-zag variable-length `long` (an `int` is written the same way).
fn varint(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn length_delimited(bytes: &[u8], out: &mut Vec<u8>) {
    varint(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

fn unsupported(schema: &Schema, path: Path<'_>) -> Error {
    invalid(path, format!("unsupported schema type {schema:?}"))
}

fn null(json: &Json, path: Path<'_>) -> Result<()> {
    match json {
        Json::Null => Ok(()),
        _ => Err(invalid(path, "expected null")),
    }
}

fn boolean(json: &Json, path: Path<'_>) -> Result<bool> {
    json.as_bool()
        .ok_or_else(|| invalid(path, "expected a boolean"))
}

fn long(json: &Json, path: Path<'_>) -> Result<i64> {
    json.as_i64()
        .ok_or_else(|| invalid(path, "expected an integer"))
}

fn int(json: &Json, path: Path<'_>) -> Result<i32> {
    i32::try_from(long(json, path)?).map_err(|_| invalid(path, "integer out of range"))
}

fn double(json: &Json, path: Path<'_>) -> Result<f64> {
    json.as_f64()
        .ok_or_else(|| invalid(path, "expected a number"))
}

fn uuid(json: &Json, path: Path<'_>) -> Result<uuid::Uuid> {
    as_str(json, path)?
        .parse()
        .map_err(|_| invalid(path, "expected a UUID"))
}

/// A `date`: days from 1970-01-01.
fn date_days(json: &Json, path: Path<'_>) -> Result<i32> {
    let date: NaiveDate = as_str(json, path)?
        .parse()
        .map_err(|_| invalid(path, "expected a date as YYYY-MM-DD"))?;
    i32::try_from((date - epoch()).num_days()).map_err(|_| invalid(path, "date out of range"))
}

fn timestamp_millis(json: &Json, path: Path<'_>) -> Result<i64> {
    match json {
        Json::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(path, "expected milliseconds")),
        Json::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| invalid(path, "expected an RFC 3339 timestamp")),
        _ => Err(invalid(path, "expected a timestamp")),
    }
}

/// A bytes-backed decimal's two's complement bytes ([`decimal_to_avro`]).
fn decimal_bytes(json: &Json, d: &DecimalSchema, path: Path<'_>) -> Result<Vec<u8>> {
    if !matches!(d.inner, InnerDecimalSchema::Bytes) {
        return Err(invalid(path, "only bytes-backed decimals are supported"));
    }
    let amount = decimal_from_json(json, path)?;
    scaled_bytes(amount, d.precision, d.scale, path)
}

fn array<'a>(json: &'a Json, path: Path<'_>) -> Result<&'a Vec<Json>> {
    json.as_array()
        .ok_or_else(|| invalid(path, "expected an array"))
}

/// The branch of a union the value takes, `accept` trying each in turn (with its index):
/// the null branch for null, not given to `accept`; otherwise (our unions are
/// `["null", T]`) the first other branch `accept` takes.
fn union_branch(
    json: &Json,
    union: &UnionSchema,
    path: Path<'_>,
    mut accept: impl FnMut(usize, &Schema) -> Result<()>,
) -> Result<usize> {
    let variants = union.variants();
    if json.is_null() {
        return variants
            .iter()
            .position(|v| matches!(v, Schema::Null))
            .ok_or_else(|| invalid(path, "must not be null"));
    }
    let mut last = None;
    for (i, variant) in variants.iter().enumerate() {
        if matches!(variant, Schema::Null) {
            continue;
        }
        match accept(i, variant) {
            Ok(()) => return Ok(i),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| invalid(path, "no union branch accepts the value")))
}

/// Each field of the record in the schema's order, with its value (its default when the
/// JSON lacks it) and its path, given to `field`.
fn record_fields<'j>(
    json: &'j Json,
    record: &'j RecordSchema,
    path: Path<'_>,
    mut field: impl FnMut(&'j RecordField, &'j Json, Path<'_>) -> Result<()>,
) -> Result<()> {
    let object = json
        .as_object()
        .ok_or_else(|| invalid(path, "expected an object"))?;
    for f in &record.fields {
        let field_path = Path::Field(&path, &f.name);
        let value = match object.get(&f.name) {
            Some(v) => v,
            None => f
                .default
                .as_ref()
                .ok_or_else(|| invalid(field_path, "is required"))?,
        };
        field(f, value, field_path)?;
    }
    Ok(())
}

fn as_str<'a>(json: &'a Json, path: Path<'_>) -> Result<&'a str> {
    json.as_str()
        .ok_or_else(|| invalid(path, "expected a string"))
}

fn decimal_from_json(json: &Json, path: Path<'_>) -> Result<Decimal> {
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
    scaled_bytes(amount, precision, scale, path).map(apache_avro::Decimal::from)
}

/// [`decimal_to_avro`]'s bytes: the amount at `scale`, as big-endian two's complement.
fn scaled_bytes(
    amount: Decimal,
    precision: usize,
    scale: usize,
    path: impl std::fmt::Display,
) -> Result<Vec<u8>> {
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
    Ok(minimal_be_bytes(mantissa))
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
    decimal_from_be_bytes(&bytes, scale, path)
}

/// [`decimal_from_avro`] of the decimal's bytes.
pub fn decimal_from_be_bytes(
    bytes: &[u8],
    scale: u32,
    path: impl std::fmt::Display + Copy,
) -> Result<Decimal> {
    if bytes.len() > 16 {
        return Err(invalid(path, "decimal wider than 128 bits"));
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xFF
    } else {
        0x00
    };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
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
