//! Pages of a list. Every list the API serves comes a page at a time: `?limit=` rows
//! (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]) after `?after=<cursor>`, where the
//! cursor is the `next` of the page before (`null` on the last page). A cursor holds the
//! sort key of the last row served, not a position, so rows added meanwhile never make a
//! page repeat or skip one that was already there.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Rows in a page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page.
pub const MAX_LIMIT: usize = 1000;
/// A cursor longer than this is not one of ours.
const MAX_CURSOR_CHARS: usize = 1024;

/// What the caller asked for: how many rows, after which sort key `K`.
#[derive(Debug)]
pub struct PageRequest<K> {
    pub limit: usize,
    pub after: Option<K>,
}

impl<K: DeserializeOwned> PageRequest<K> {
    /// From the raw `limit` and `after` parameters; errors name the parameter.
    pub fn parse(limit: Option<&str>, after: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(
                        "limit",
                        format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        let after = after.map(decode).transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// Rows to fetch: one more than the page, to know whether another page follows.
    pub fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }

    /// Cuts `rows` (fetched with [`fetch`](Self::fetch)) to the page and returns the
    /// cursor of the next page, if there is one.
    pub fn finish<T, C: Serialize>(
        &self,
        rows: &mut Vec<T>,
        key: impl Fn(&T) -> C,
    ) -> Option<String> {
        if rows.len() <= self.limit {
            return None;
        }
        rows.truncate(self.limit);
        rows.last().map(|last| encode(&key(last)))
    }
}

fn encode<C: Serialize>(key: &C) -> String {
    // A tuple of strings, numbers, UUIDs and timestamps always serializes.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

fn decode<K: DeserializeOwned>(raw: &str) -> Result<K, ApiError> {
    let refused = || ApiError::validation("after", "is not a cursor this list gave out");
    if raw.len() > MAX_CURSOR_CHARS {
        return Err(refused());
    }
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| refused())?;
    let key: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    if !holdable(&key) {
        return Err(refused());
    }
    serde_json::from_value(key).map_err(|_| refused())
}

/// Whether every value of a decoded cursor is one Postgres takes as a parameter: a cursor
/// is the caller's text, and a forged one may carry a NUL (which no `text` holds) or a
/// timestamp thousands of years BC (past `timestamptz`'s range), which would otherwise be
/// the database's error, a 500. The cursors the API gives out hold neither.
fn holdable(value: &serde_json::Value) -> bool {
    use chrono::{DateTime, Datelike, Utc};
    use serde_json::Value;
    match value {
        Value::String(s) => {
            !s.contains('\0')
                && s.parse::<DateTime<Utc>>()
                    .map_or(true, |t| (1..=9999).contains(&t.year()))
        }
        Value::Array(items) => items.iter().all(holdable),
        Value::Object(fields) => fields.values().all(holdable),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    type Key = (DateTime<Utc>, Uuid);

    #[test]
    fn a_cursor_round_trips_its_key() {
        let key: Key = (Utc::now(), Uuid::new_v4());
        let page = PageRequest::<Key>::parse(Some("2"), None).unwrap();
        let mut rows = vec![key, key, key];
        let next = page
            .finish(&mut rows, |k| *k)
            .expect("a third row means a next page");
        assert_eq!(rows.len(), 2);
        let again = PageRequest::<Key>::parse(None, Some(&next)).unwrap();
        assert_eq!(again.after, Some(key));
        assert_eq!(again.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn the_last_page_has_no_cursor() {
        let page = PageRequest::<Key>::parse(Some("3"), None).unwrap();
        let mut rows = vec![1, 2, 3];
        assert_eq!(page.finish(&mut rows, |n| *n), None);
        assert_eq!(rows, [1, 2, 3]);
    }

    #[test]
    fn bad_limits_and_cursors_name_their_parameter() {
        for limit in ["0", "1001", "-1", "ten", ""] {
            let err = PageRequest::<Key>::parse(Some(limit), None).unwrap_err();
            assert!(
                matches!(&err, ApiError::Validation { field, .. } if field == "limit"),
                "{limit}: {err}"
            );
        }
        let other_shape = URL_SAFE_NO_PAD.encode(br#"["x", 1]"#);
        // Forged: well shaped, but past what Postgres takes.
        let zero = "00000000-0000-0000-0000-000000000000";
        let before_the_calendar =
            URL_SAFE_NO_PAD.encode(format!(r#"["-5000-01-01T00:00:00Z", "{zero}"]"#));
        let past_the_calendar =
            URL_SAFE_NO_PAD.encode(format!(r#"["+12026-01-01T00:00:00Z", "{zero}"]"#));
        for after in [
            "!!",
            "bm90IGpzb24",
            other_shape.as_str(),
            &"A".repeat(2000),
            &before_the_calendar,
            &past_the_calendar,
        ] {
            let err = PageRequest::<Key>::parse(None, Some(after)).unwrap_err();
            assert!(
                matches!(&err, ApiError::Validation { field, .. } if field == "after"),
                "{after}: {err}"
            );
        }
        let nul = URL_SAFE_NO_PAD.encode(format!(r#"["a\u0000", "{zero}"]"#));
        let err = PageRequest::<(String, Uuid)>::parse(None, Some(&nul)).unwrap_err();
        assert!(
            matches!(&err, ApiError::Validation { field, .. } if field == "after"),
            "{err}"
        );
        let fine = URL_SAFE_NO_PAD.encode(format!(r#"["a", "{zero}"]"#));
        assert!(PageRequest::<(String, Uuid)>::parse(None, Some(&fine)).is_ok());
    }
}
