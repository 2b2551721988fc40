//! The gateway's memory: charges, refunds, the log of money moved, and the answer given
//! to each idempotency key. It lives in the process only; a restart forgets everything.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::StatusCode;
use chrono::{SubsecRound, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::charges::{Charge, ChargeRequest, LogEntry, LogKind, Refund, RefundRequest, Status};
use crate::{Error, Result};

/// What an idempotency key was first used for; a later request under the key must match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Charge(ChargeRequest),
    Refund {
        charge_id: String,
        request: RefundRequest,
    },
}

#[derive(Debug)]
struct Stored {
    request: Request,
    status: StatusCode,
    body: Bytes,
}

/// The answer to a money-moving request; `replayed` when it was stored under the key
/// by an earlier request and nothing happened now.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub status: StatusCode,
    pub body: Bytes,
    pub replayed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Book {
    charges: Vec<Charge>,
    by_id: HashMap<String, usize>,
    log: Vec<LogEntry>,
    keys: HashMap<String, Stored>,
    /// The charge each idempotency key made (declined ones too).
    charge_by_key: HashMap<String, String>,
}

impl Book {
    /// Makes the charge, or returns what the key already got. `decline` is asked only
    /// when a new charge is about to be made.
    pub(crate) fn charge(
        &mut self,
        key: &str,
        request: ChargeRequest,
        decline: impl FnOnce(&ChargeRequest) -> bool,
    ) -> Result<Outcome> {
        let request = Request::Charge(request);
        if let Some(outcome) = self.replay(key, &request)? {
            return Ok(outcome);
        }
        let Request::Charge(charge) = &request else {
            unreachable!("built above")
        };
        let declined = decline(charge);
        let charge = Charge {
            charge_id: format!("ch_{}", Uuid::now_v7().simple()),
            status: if declined {
                Status::Declined
            } else {
                Status::Succeeded
            },
            amount: charge.amount,
            currency: charge.currency.clone(),
            reference: charge.reference.clone(),
            method: charge.method,
            created_at: Utc::now().trunc_subsecs(3),
            error: declined.then(|| "card declined by the issuer".to_string()),
            amount_refunded: Decimal::new(0, 2),
            refunds: Vec::new(),
        };
        let status = if declined {
            StatusCode::PAYMENT_REQUIRED
        } else {
            StatusCode::CREATED
        };
        let body = Bytes::from(serde_json::to_vec(&charge).map_err(Error::internal)?);
        self.push_log(LogKind::Charge, &charge, None, key);
        self.charge_by_key
            .insert(key.to_string(), charge.charge_id.clone());
        self.by_id
            .insert(charge.charge_id.clone(), self.charges.len());
        self.charges.push(charge);
        Ok(self.store(key, request, status, body))
    }

    /// Refunds the charge (all that is left of it, or the amount asked for), or returns
    /// what the key already got.
    pub(crate) fn refund(
        &mut self,
        key: &str,
        charge_id: &str,
        request: RefundRequest,
    ) -> Result<Outcome> {
        let request = Request::Refund {
            charge_id: charge_id.to_string(),
            request,
        };
        if let Some(outcome) = self.replay(key, &request)? {
            return Ok(outcome);
        }
        let Request::Refund { request: asked, .. } = &request else {
            unreachable!("built above")
        };
        let index = *self
            .by_id
            .get(charge_id)
            .ok_or_else(|| Error::NotFound(format!("charge {charge_id}")))?;
        let charge = &self.charges[index];
        if charge.status == Status::Declined {
            return Err(Error::conflict(
                None,
                format!("charge {charge_id} was declined; there is nothing to refund"),
            ));
        }
        let left = charge.amount - charge.amount_refunded;
        if left.is_zero() {
            return Err(Error::conflict(
                None,
                format!("charge {charge_id} is already fully refunded"),
            ));
        }
        let amount = asked.amount.unwrap_or(left);
        if amount > left {
            return Err(Error::validation(
                "amount",
                format!("exceeds what is left to refund of charge {charge_id}: {left}"),
            ));
        }
        let refund = Refund {
            refund_id: format!("re_{}", Uuid::now_v7().simple()),
            charge_id: charge_id.to_string(),
            amount,
            currency: charge.currency.clone(),
            status: Status::Succeeded,
            created_at: Utc::now().trunc_subsecs(3),
        };
        let body = Bytes::from(serde_json::to_vec(&refund).map_err(Error::internal)?);
        let charge = self.charges[index].clone();
        self.push_log(LogKind::Refund, &charge, Some(&refund), key);
        let charge = &mut self.charges[index];
        charge.amount_refunded += amount;
        charge.refunds.push(refund);
        Ok(self.store(key, request, StatusCode::CREATED, body))
    }

    pub(crate) fn charge_by_id(&self, charge_id: &str) -> Option<&Charge> {
        self.by_id.get(charge_id).map(|&i| &self.charges[i])
    }

    /// Every charge in the order made, or only those for one reference and/or the one
    /// made under one idempotency key.
    pub(crate) fn charges(&self, reference: Option<&str>, key: Option<&str>) -> Vec<Charge> {
        let by_key = key.map(|k| self.charge_by_key.get(k));
        self.charges
            .iter()
            .filter(|c| reference.is_none_or(|r| c.reference == r))
            .filter(|c| by_key.is_none_or(|id| id == Some(&c.charge_id)))
            .cloned()
            .collect()
    }

    pub(crate) fn log(&self) -> &[LogEntry] {
        &self.log
    }

    fn replay(&self, key: &str, request: &Request) -> Result<Option<Outcome>> {
        let Some(stored) = self.keys.get(key) else {
            return Ok(None);
        };
        if stored.request != *request {
            return Err(Error::conflict(
                Some("Idempotency-Key"),
                "this key was already used for a different request; \
                 use a new key for a new payment",
            ));
        }
        Ok(Some(Outcome {
            status: stored.status,
            body: stored.body.clone(),
            replayed: true,
        }))
    }

    fn store(&mut self, key: &str, request: Request, status: StatusCode, body: Bytes) -> Outcome {
        let outcome = Outcome {
            status,
            body: body.clone(),
            replayed: false,
        };
        self.keys.insert(
            key.to_string(),
            Stored {
                request,
                status,
                body,
            },
        );
        outcome
    }

    fn push_log(&mut self, kind: LogKind, charge: &Charge, refund: Option<&Refund>, key: &str) {
        self.log.push(LogEntry {
            seq: self.log.len() as u64 + 1,
            kind,
            charge_id: charge.charge_id.clone(),
            refund_id: refund.map(|r| r.refund_id.clone()),
            status: refund.map_or(charge.status, |r| r.status),
            amount: refund.map_or(charge.amount, |r| r.amount),
            currency: charge.currency.clone(),
            reference: charge.reference.clone(),
            idempotency_key: key.to_string(),
            at: refund.map_or(charge.created_at, |r| r.created_at),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charges::Method;

    fn request(amount: i64) -> ChargeRequest {
        ChargeRequest {
            amount: Decimal::new(amount, 2),
            currency: "INR".into(),
            reference: "inv-1".into(),
            method: Method::Upi,
        }
    }

    #[test]
    fn a_key_gets_one_charge_and_the_same_answer_every_time() {
        let mut book = Book::default();
        let first = book.charge("k1", request(1000), |_| false).unwrap();
        let again = book
            .charge("k1", request(1000), |_| panic!("not asked"))
            .unwrap();
        assert_eq!(
            (first.status, again.status),
            (StatusCode::CREATED, StatusCode::CREATED)
        );
        assert_eq!(first.body, again.body);
        assert!(!first.replayed && again.replayed);
        assert_eq!(book.log().len(), 1);
        let made: Charge = serde_json::from_slice(&first.body).unwrap();
        let found = book.charges(None, Some("k1"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].charge_id, made.charge_id);
        assert!(book.charges(None, Some("k2")).is_empty());
        assert!(book.charges(Some("other"), Some("k1")).is_empty());
        let other = book.charge("k1", request(2000), |_| false).unwrap_err();
        assert!(matches!(
            other,
            Error::Conflict {
                field: Some("Idempotency-Key"),
                ..
            }
        ));
    }

    #[test]
    fn partial_refunds_add_up_to_the_charge_and_no_further() {
        let mut book = Book::default();
        let charge = book.charge("c", request(1000), |_| false).unwrap();
        let charge: Charge = serde_json::from_slice(&charge.body).unwrap();
        let id = &charge.charge_id;
        let part = |amount| RefundRequest {
            amount: Some(Decimal::new(amount, 2)),
        };
        book.refund("r1", id, part(400)).unwrap();
        let err = book.refund("r2", id, part(700)).unwrap_err();
        assert!(matches!(err, Error::Validation { ref field, .. } if field == "amount"));
        let rest = book
            .refund("r3", id, RefundRequest { amount: None })
            .unwrap();
        let rest: Refund = serde_json::from_slice(&rest.body).unwrap();
        assert_eq!(rest.amount.to_string(), "6.00");
        let err = book
            .refund("r4", id, RefundRequest { amount: None })
            .unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }));
        assert_eq!(
            book.charge_by_id(id).unwrap().amount_refunded,
            charge.amount
        );
        let kinds: Vec<_> = book.log().iter().map(|e| (e.seq, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (1, LogKind::Charge),
                (2, LogKind::Refund),
                (3, LogKind::Refund)
            ]
        );
    }
}
