//! The contract's types: what a client sends, what the gateway answers and logs.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Upi,
    Card,
    Netbanking,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    /// A permanent business failure: retrying the same request gets the same answer.
    Declined,
}

/// A charge as every endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub charge_id: String,
    pub status: Status,
    /// Always two decimal places: `"1500.50"`.
    pub amount: Decimal,
    pub currency: String,
    pub reference: String,
    pub method: Method,
    pub created_at: DateTime<Utc>,
    /// Why a declined charge was declined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub amount_refunded: Decimal,
    pub refunds: Vec<Refund>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refund {
    pub refund_id: String,
    pub charge_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub status: Status,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogKind {
    Charge,
    Refund,
}

/// One line of `GET /v1/log`: money the gateway actually moved (or a charge it declined),
/// in the order it happened. Rejected, failed, hung and replayed requests leave no line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// 1, 2, 3, … in order.
    pub seq: u64,
    pub kind: LogKind,
    pub charge_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    pub status: Status,
    pub amount: Decimal,
    pub currency: String,
    /// The charge's reference (for a refund, the refunded charge's).
    pub reference: String,
    pub idempotency_key: String,
    pub at: DateTime<Utc>,
}

/// One line of `GET /_requests`: a `/v1` request as the gateway received it, before any
/// switch acted on it, so replays, refusals, injected faults and `down` answers are all
/// listed (unlike `/v1/log`, which lists only money moved). Tests count with it how often
/// a client asked, e.g. how many charge requests one idempotency key saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// 1, 2, 3, … in order of arrival.
    pub seq: u64,
    pub method: String,
    /// With the query string: `/v1/charges?idempotency_key=k`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub at: DateTime<Utc>,
}

/// A validated `POST /v1/charges` body. Two requests under one idempotency key must be
/// equal as these (so `"1500.5"` and `"1500.50"` are the same request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub amount: Decimal,
    pub currency: String,
    pub reference: String,
    pub method: Method,
}

/// The largest amount Avro `decimal(18,2)`, the pipeline's money type, can carry.
/// (999_999_999_999_999_999 hundredths, spelled as the 96-bit mantissa's low and middle words.)
const MAX_AMOUNT: Decimal = Decimal::from_parts(0xA763_FFFF, 0x0DE0_B6B3, 0, false, 2);

impl ChargeRequest {
    pub fn parse(body: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Body {
            amount: Option<serde_json::Value>,
            currency: Option<String>,
            reference: Option<String>,
            method: Option<Method>,
        }
        let body: Body = parse_object(body, &["amount", "currency", "reference", "method"])?;
        let amount = parse_amount(required("amount", body.amount)?)?;
        let currency = required("currency", body.currency)?;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::validation(
                "currency",
                "must be an ISO 4217 code such as \"INR\"",
            ));
        }
        let reference = required("reference", body.reference)?;
        if reference.is_empty() || reference.len() > 255 || reference.chars().any(char::is_control)
        {
            return Err(Error::validation(
                "reference",
                "must be 1 to 255 printable characters",
            ));
        }
        let method = required("method", body.method)?;
        Ok(ChargeRequest {
            amount,
            currency,
            reference,
            method,
        })
    }

    /// A card whose reference says "decline" is declined, the way PSPs' test cards are.
    pub fn is_test_decline(&self) -> bool {
        self.method == Method::Card && self.reference.to_ascii_lowercase().contains("decline")
    }
}

/// A validated `POST /v1/charges/{id}/refunds` body: empty, `{}`, or `{"amount": "…"}`
/// for a partial refund. Without an amount, whatever is left of the charge is refunded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub amount: Option<Decimal>,
}

impl RefundRequest {
    pub fn parse(body: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Body {
            amount: Option<serde_json::Value>,
        }
        let body: Body = parse_object(body, &["amount"])?;
        let amount = body.amount.map(parse_amount).transpose()?;
        Ok(RefundRequest { amount })
    }
}

fn required<T>(field: &str, value: Option<T>) -> Result<T> {
    value.ok_or_else(|| Error::validation(field, "is required"))
}

/// A positive decimal string with at most two decimal places (trailing zeros aside) that
/// fits `decimal(18,2)`; returned with exactly two places.
fn parse_amount(value: serde_json::Value) -> Result<Decimal> {
    const FORMAT: &str = "must be a decimal string such as \"1500.50\"";
    let serde_json::Value::String(raw) = value else {
        return Err(Error::validation(
            "amount",
            format!("{FORMAT} (a JSON number can lose precision)"),
        ));
    };
    let (whole, fraction) = raw.split_once('.').unwrap_or((&raw, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (raw.contains('.') && !digits(fraction)) {
        return Err(Error::validation("amount", FORMAT));
    }
    if fraction.trim_end_matches('0').len() > 2 {
        return Err(Error::validation(
            "amount",
            "must have at most 2 decimal places",
        ));
    }
    let mut amount = Decimal::from_str_exact(&raw)
        .ok()
        .filter(|a| *a <= MAX_AMOUNT)
        .ok_or_else(|| Error::validation("amount", "is too large for decimal(18,2)"))?;
    if amount <= Decimal::ZERO {
        return Err(Error::validation("amount", "must be greater than 0"));
    }
    amount.rescale(2);
    Ok(amount)
}

/// Reads a JSON object, refusing unknown fields by name. An empty body reads as `{}`.
pub(crate) fn parse_object<T: DeserializeOwned>(body: &[u8], known: &[&str]) -> Result<T> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(Default::default())
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::bad_request("body", format!("is not valid JSON: {e}")))?
    };
    let serde_json::Value::Object(object) = &value else {
        return Err(Error::bad_request("body", "must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(Error::validation(
            unknown,
            format!("is not a known field; known: {}", known.join(", ")),
        ));
    }
    serde_path_to_error::deserialize(value)
        .map_err(|e| Error::validation(&e.path().to_string(), e.inner().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn amount(raw: serde_json::Value) -> Result<String> {
        parse_amount(raw).map(|a| a.to_string())
    }

    #[test]
    fn amounts_are_positive_decimal_strings_with_two_places() {
        assert_eq!(amount(json!("1500.5")).unwrap(), "1500.50");
        assert_eq!(amount(json!("1500.500")).unwrap(), "1500.50");
        assert_eq!(amount(json!("7")).unwrap(), "7.00");
        assert_eq!(amount(json!("0.01")).unwrap(), "0.01");
        assert_eq!(
            amount(json!("9999999999999999.99")).unwrap(),
            "9999999999999999.99"
        );
        for bad in [
            json!("0"),
            json!("0.00"),
            json!("-5"),
            json!("1.005"),
            json!("1e3"),
            json!("1_000"),
            json!(" 5"),
            json!("5."),
            json!(".5"),
            json!(""),
            json!("10000000000000000.00"),
            json!(1500.5),
            json!(null),
        ] {
            let err = amount(bad.clone()).unwrap_err();
            assert!(
                matches!(err, Error::Validation { ref field, .. } if field == "amount"),
                "{bad} gave {err:?}"
            );
        }
    }

    #[test]
    fn a_charge_body_names_the_field_that_is_wrong() {
        let field =
            |body: serde_json::Value| match ChargeRequest::parse(body.to_string().as_bytes()) {
                Err(Error::Validation { field, .. }) => field,
                other => panic!("{body}: {other:?}"),
            };
        let good =
            json!({"amount": "10", "currency": "INR", "reference": "inv-1", "method": "upi"});
        assert!(ChargeRequest::parse(good.to_string().as_bytes()).is_ok());
        let with = |k: &str, v: serde_json::Value| {
            let mut b = good.clone();
            b[k] = v;
            b
        };
        assert_eq!(field(with("currency", json!("inr"))), "currency");
        assert_eq!(field(with("reference", json!(""))), "reference");
        assert_eq!(field(with("method", json!("cash"))), "method");
        assert_eq!(field(with("method", json!(null))), "method");
        assert_eq!(field(with("tip", json!("5"))), "tip");
        assert!(matches!(
            ChargeRequest::parse(b"[1]"),
            Err(Error::BadRequest { .. })
        ));
        assert!(matches!(
            ChargeRequest::parse(b"{\"amount\""),
            Err(Error::BadRequest { .. })
        ));
    }

    #[test]
    fn the_same_amount_written_twice_ways_is_the_same_request() {
        let a = json!({"amount": "10.5", "currency": "INR", "reference": "r", "method": "card"});
        let b = json!({"method": "card", "reference": "r", "currency": "INR", "amount": "10.50"});
        assert_eq!(
            ChargeRequest::parse(a.to_string().as_bytes()).unwrap(),
            ChargeRequest::parse(b.to_string().as_bytes()).unwrap()
        );
    }
}
