//! What commands accept from outside, parsed strictly: money as an exact decimal string,
//! dates as `YYYY-MM-DD` in the years a ledger can hold, emails that are addresses. A
//! value outside these is refused by the JSON parser with the field named (a 422), before
//! anything reaches Postgres or the wire.

use std::fmt;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

pub use dhanman_schemas::events::Breaks;
use dhanman_schemas::events::{FieldError, check_address, check_date, check_text};

/// An amount of money as a command carries it: a JSON string holding an exact decimal
/// (`"3500.00"`). A JSON number is refused, since JSON parsers pass numbers through binary
/// floating point (`99999999999999.99` would become `100000000000000`), and so are
/// exponents (`"1e3"`), signs other than a leading `-`, spaces and empty strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Amount(pub Decimal);

impl Amount {
    pub fn value(self) -> Decimal {
        self.0
    }
}

impl std::str::FromStr for Amount {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        exact_decimal(raw).map(Amount)
    }
}

/// Parses an exact decimal: optional `-`, digits, optionally `.` and digits.
pub fn exact_decimal(raw: &str) -> Result<Decimal, String> {
    const SHAPE: &str = "must be a decimal number written as a string, such as \"3500.00\"";
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    let (whole, fraction) = match digits.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if raw.len() > 40 || !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(SHAPE.into());
    }
    Decimal::from_str_exact(raw).map_err(|_| "is too large or too precise".to_string())
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor;

        impl Visitor<'_> for AmountVisitor {
            type Value = Amount;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number written as a string, such as \"3500.00\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                exact_decimal(v).map(Amount).map_err(E::custom)
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Amount, E> {
                Err(E::custom(NUMBER))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Amount, E> {
                Err(E::custom(NUMBER))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Amount, E> {
                Err(E::custom(NUMBER))
            }
        }

        const NUMBER: &str = "must be a decimal number written as a string, such as \"3500.00\": \
                              JSON numbers pass through binary floating point and lose cents";
        deserializer.deserialize_any(AmountVisitor)
    }
}

/// A calendar date as a command or query carries it: exactly `YYYY-MM-DD`, in the years
/// the books hold ([`check_date`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Day(pub NaiveDate);

impl Day {
    pub fn date(self) -> NaiveDate {
        self.0
    }
}

/// Parses `YYYY-MM-DD` (four-digit year, two-digit month and day, nothing else) within
/// the years a command may name.
pub fn strict_date(raw: &str) -> Result<NaiveDate, String> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err("must be a date written as YYYY-MM-DD".into());
    }
    let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| "is not a calendar date".to_string())?;
    check_date("date", date).map_err(|e| e.message)?;
    Ok(date)
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        strict_date(&raw).map(Day).map_err(de::Error::custom)
    }
}

/// An email address a message can be sent to (`@` alone, spaces or a missing domain are
/// not): a bare address (no display name, no domain literal) that is also one the tables'
/// checks hold ([`check_address`]), so that what passes here is never refused by the
/// database.
pub fn check_email(field: &str, email: &str) -> Result<(), FieldError> {
    let options = email_address::Options {
        allow_display_text: false,
        allow_domain_literal: false,
        ..Default::default()
    };
    check_address(field, email)?;
    email_address::EmailAddress::parse_with_options(email, options)
        .map(|_| ())
        .map_err(|_| FieldError::new(field, "must be an email address"))
}

/// An optional field of one line (a unit, an invoice number, a reference): absent is
/// fine, what is there passes [`check_text`] with no line breaks.
pub fn check_line(field: &str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    value.map_or(Ok(()), |v| check_text(field, v, max, Breaks::Refused))
}

/// An optional field that may run over several lines (a reason, a comment, a description).
pub fn check_lines(field: &str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    value.map_or(Ok(()), |v| check_text(field, v, max, Breaks::Allowed))
}

/// An optional text kept trimmed (a reason, a comment, a reference): absent or blank is
/// none; what is left passes [`check_text`].
pub fn trimmed<'a>(
    field: &str,
    value: Option<&'a str>,
    max: usize,
    breaks: Breaks,
) -> Result<Option<&'a str>, FieldError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    value.map_or(Ok(()), |v| check_text(field, v, max, breaks))?;
    Ok(value)
}

/// A field of one line that must be there (a name): trimmed, not blank, [`check_line`].
pub fn required_line<'a>(
    field: &str,
    value: Option<&'a str>,
    max: usize,
) -> Result<&'a str, FieldError> {
    match value.map(str::trim) {
        Some(v) if !v.is_empty() => check_text(field, v, max, Breaks::Refused).map(|()| v),
        _ => Err(FieldError::new(field, "is required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(json: &str) -> Result<Decimal, String> {
        serde_json::from_str::<Amount>(json)
            .map(Amount::value)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_email_is_a_bare_address_the_tables_accept() {
        assert!(check_email("email", "asha@example.org").is_ok());
        assert!(check_email("email", "asha.rao+bills@mail.example.org").is_ok());
        for refused in [
            "Asha <asha@example.org>",
            "\"a b\"@example.org",
            "\"a@b\"@example.org",
            "asha@[192.168.0.1]",
            "asha@",
            "@example.org",
            "asha example.org",
        ] {
            let e = check_email("email", refused).unwrap_err();
            assert_eq!(e.field, "email", "{refused}");
        }
    }

    #[test]
    fn amounts_are_exact_decimal_strings_only() {
        assert_eq!(
            amount(r#""99999999999999.99""#).unwrap().to_string(),
            "99999999999999.99"
        );
        assert_eq!(amount(r#""3500""#).unwrap(), Decimal::new(3500, 0));
        assert_eq!(amount(r#""-1.5""#).unwrap(), Decimal::new(-15, 1));
        for bad in [
            "99999999999999.99",
            "3500",
            r#""1e3""#,
            r#""+5""#,
            r#"" 5""#,
            r#""""#,
            r#"".5""#,
            r#""5.""#,
            r#""1,000""#,
            r#""NaN""#,
            "null",
        ] {
            assert!(amount(bad).is_err(), "{bad}");
        }
        assert!(
            amount("99999999999999.99")
                .unwrap_err()
                .contains("floating point")
        );
    }

    #[test]
    fn dates_are_four_digit_years_in_range() {
        let day = |s: &str| serde_json::from_str::<Day>(&format!("\"{s}\"")).map(Day::date);
        assert_eq!(
            day("2026-12-10").unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 10).unwrap()
        );
        for bad in [
            "-0100-01-01",
            "-200000-01-01",
            "+2026-01-01",
            "2026-1-01",
            "2026-02-30",
            "1899-12-31",
            "20261210",
            "2026-12-10T00:00:00",
        ] {
            assert!(day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_need_a_user_and_a_domain() {
        for good in ["a@b", "asha@example.com", "first.last@society.example"] {
            assert!(check_email("email", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "@",
            "a",
            "asha@",
            "@example.com",
            "a@b@c",
            "a b@example.com",
            "a@b c",
        ] {
            assert!(check_email("email", bad).is_err(), "{bad}");
        }
    }
}
