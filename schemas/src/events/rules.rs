//! The rules a record's fields meet (and the API's commands with them): roles, approvals,
//! text, addresses, money, dates, periods, currencies; and the error naming the field that
//! breaks one.

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::{UserCreated, invoice_email};
use crate::Error;

/// Roles a user (and so an API key) can have.
pub const USER_ROLES: &[&str] = &["admin", "accountant", "approver", "manager", "cfo"];

/// The approvals a purchase order can need ([`POSubmitted::required_approvers`](super::POSubmitted::required_approvers)).
pub const APPROVAL_STEPS: &[&str] = &["manager", "cfo"];

/// An order's approvals: each one of [`APPROVAL_STEPS`], none twice (one record must not
/// ask the same approvers twice, or a thousand times).
pub fn check_approval_steps(field: &str, steps: &[String]) -> Result<(), FieldError> {
    for (i, step) in steps.iter().enumerate() {
        if !APPROVAL_STEPS.contains(&step.as_str()) {
            return Err(FieldError::new(
                &format!("{field}[{i}]"),
                format!("must be one of {}", APPROVAL_STEPS.join(", ")),
            ));
        }
        if steps[..i].contains(step) {
            return Err(FieldError::new(
                &format!("{field}[{i}]"),
                format!("{step} is already required"),
            ));
        }
    }
    Ok(())
}

/// A user as the API creates one: a known role, a name, an address the directory holds.
pub(super) fn check_user(user: &UserCreated) -> Result<(), FieldError> {
    if !USER_ROLES.contains(&user.role.as_str()) {
        return Err(FieldError::new(
            "role",
            format!("must be one of {}", USER_ROLES.join(", ")),
        ));
    }
    let name = user.name.trim();
    if name.is_empty() {
        return Err(FieldError::new("name", "must be 1 to 200 characters"));
    }
    check_text("name", name, 200, Breaks::Refused)?;
    check_address("email", &user.email)
}

/// Whether a text field may break lines: a name, a unit or a reference is one line (it may
/// land in a mail header or a table cell); a reason or a comment may run over several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaks {
    Refused,
    Allowed,
}

/// Text a person wrote for people to read: at most `max` characters, and none of those
/// that would act rather than read: control characters (NUL, BEL, ESC, DEL, C1; CR, LF and
/// tab too, unless `breaks` allows them), line and paragraph separators on one line, and the
/// bidirectional marks and overrides that can make `U+202E` text read backwards in a
/// statement or an email. Zero-width joiners stay, as Indic names need them.
pub fn check_text(field: &str, value: &str, max: usize, breaks: Breaks) -> Result<(), FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    let acts = |c: char| match c {
        '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => breaks == Breaks::Refused,
        '\u{061C}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' => true,
        c => c.is_control(),
    };
    match value.chars().find(|&c| acts(c)) {
        Some(c) => Err(FieldError::new(
            field,
            format!(
                "must not contain control or bidirectional formatting characters (found U+{:04X})",
                c as u32
            ),
        )),
        None => Ok(()),
    }
}

/// An address as the tables hold one (`^[^@[:space:]]+@[^@[:space:]]+$`): at most 254
/// bytes, one `@` with text on each side, no white space or control character. What the
/// API takes is stricter still (`dhanman_producers::input::check_email`).
pub fn check_address(field: &str, email: &str) -> Result<(), FieldError> {
    let bare = email.len() <= 254
        && email.matches('@').count() == 1
        && !email.starts_with('@')
        && !email.ends_with('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if bare {
        Ok(())
    } else {
        Err(FieldError::new(field, "must be an email address"))
    }
}

/// `template` of a [`SendInvoiceEmail`](super::SendInvoiceEmail) must be one of [`invoice_email::ALL`].
pub fn check_invoice_template(field: &str, template: &str) -> Result<(), FieldError> {
    if invoice_email::ALL.contains(&template) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be one of {}", invoice_email::ALL.join(", ")),
        ))
    }
}

/// A rule broken by one field: the API reports it as-is, processors dead-letter on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl From<FieldError> for Error {
    fn from(e: FieldError) -> Self {
        Error::Invalid(e.to_string())
    }
}

/// The shared rule for every amount: positive, at most two decimal places (fewer where its
/// currency has fewer minor units: none for the yen), at most 18 digits, in an ISO 4217
/// currency ([`check_currency`]).
pub fn check_money(field: &str, amount: Decimal, currency: &str) -> Result<(), FieldError> {
    if amount <= Decimal::ZERO {
        return Err(FieldError::new(field, "must be greater than zero"));
    }
    let places = amount.normalize().scale();
    if places > 2 {
        return Err(FieldError::new(field, "must have at most 2 decimal places"));
    }
    if amount >= Decimal::from(10_000_000_000_000_000i64) {
        return Err(FieldError::new(field, "must have at most 18 digits"));
    }
    check_currency(currency)?;
    let allowed = minor_units(currency);
    if places > allowed {
        return Err(FieldError::new(
            field,
            format!("must have at most {allowed} decimal places in {currency}"),
        ));
    }
    Ok(())
}

/// The decimal places an amount in `currency` may have: its ISO 4217 minor units, at most
/// the two every amount is kept to (the Kuwaiti dinar's third is not kept).
pub fn minor_units(currency: &str) -> u32 {
    iso_currency::Currency::from_code(currency)
        .and_then(iso_currency::Currency::exponent)
        .map_or(2, |places| u32::from(places).min(2))
}

/// The first and last years a date of the books may fall in: wide enough for any
/// society's books, narrow enough for Postgres' `date`, Avro's `date` (days since the
/// epoch in 32 bits) and chrono alike.
pub const FIRST_YEAR: i32 = 1900;
pub const LAST_YEAR: i32 = 9999;

/// A date of the books: in the years [`FIRST_YEAR`] through [`LAST_YEAR`].
pub fn check_date(field: &str, date: NaiveDate) -> Result<(), FieldError> {
    use chrono::Datelike;
    if (FIRST_YEAR..=LAST_YEAR).contains(&date.year()) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must fall in the years {FIRST_YEAR} through {LAST_YEAR}"),
        ))
    }
}

/// A pay or billing period: a month written as YYYY-MM, in the years a date of the books
/// may fall in ([`check_date`]).
pub fn check_period(field: &str, period: &str) -> Result<(), FieldError> {
    // chrono alone would take `2026-1` or `+2026-01`; the shape is checked first.
    let shaped = period.len() == 7
        && period.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    match NaiveDate::parse_from_str(&format!("{period}-01"), "%Y-%m-%d") {
        Ok(first) if shaped => check_date(field, first),
        _ => Err(FieldError::new(field, "must be a month as YYYY-MM")),
    }
}

/// A currency: an ISO 4217 code (`INR`), of money rather than of one of the standard's
/// special units (gold, the SDR, `XTS` for testing, `XXX` for none). A currency superseded
/// since (`HRK`) still names the money of the books kept in it.
pub fn check_currency(currency: &str) -> Result<(), FieldError> {
    match iso_currency::Currency::from_code(currency) {
        Some(code) if !code.is_special() => Ok(()),
        _ => Err(FieldError::new(
            "currency",
            "must be an ISO 4217 currency code such as INR",
        )),
    }
}
