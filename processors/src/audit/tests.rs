//! The auditor's checks on crafted rows.

use super::*;

fn violation(kind: &'static str, subject: &str) -> Violation {
    Violation {
        kind,
        organization_id: None,
        subject: subject.to_string(),
        detail: String::new(),
    }
}

fn report(violations: Vec<Violation>) -> AuditReport {
    AuditReport {
        checked_at: Utc::now(),
        violations,
    }
}

#[test]
fn every_kind_is_counted_and_the_summary_names_those_found() {
    let clean = report(vec![]);
    assert!(clean.is_clean());
    assert_eq!(clean.summary(), "audit: clean");
    assert_eq!(clean.counts().len(), KINDS.len());
    assert!(clean.counts().iter().all(|(_, n)| *n == 0));

    let found = report(vec![
        violation(RECEIVABLE_MISMATCH, "c"),
        violation(BALANCE_MISMATCH, "a"),
    ]);
    assert_eq!(
        found.summary(),
        "audit: 2 violations (balance_mismatch 1, receivable_mismatch 1)"
    );
    let counts: Vec<_> = found.counts().into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(counts, [(BALANCE_MISMATCH, 1), (RECEIVABLE_MISMATCH, 1)]);
    assert_eq!(
        report(vec![violation(ORPHAN_ENTRY, "e")]).summary(),
        "audit: 1 violation (orphan_entry 1)"
    );
}

#[test]
fn kinds_are_distinct_and_named_as_documented() {
    let distinct: HashSet<_> = KINDS.iter().collect();
    assert_eq!(distinct.len(), KINDS.len());
    assert_eq!(KINDS.len(), 7);
    assert!(
        KINDS
            .iter()
            .all(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    );
}

#[test]
fn readiness_says_not_yet_run_then_counts() {
    assert_eq!(readiness(None), json!("not yet run"));
    let r = report(vec![
        violation(BALANCE_MISMATCH, "a"),
        violation(BALANCE_MISMATCH, "b"),
        violation(TRIAL_BALANCE, "INR"),
    ]);
    let line = readiness(Some(&r));
    assert_eq!(line["violations"], 3);
    assert_eq!(
        line["by_kind"],
        json!({"balance_mismatch": 2, "trial_balance": 1})
    );
    assert!(line["checked_at"].is_string());
    assert_eq!(readiness(Some(&report(vec![])))["violations"], 0);
}

#[test]
fn a_violation_is_logged_once_while_it_lasts_and_again_if_it_returns() {
    let first = report(vec![violation(BALANCE_MISMATCH, "a")]);
    let (new, logged) = newly_found(&HashSet::new(), &first);
    assert_eq!(new.len(), 1);
    // The next run finds it again, and one more: only the new one is logged.
    let second = report(vec![
        violation(BALANCE_MISMATCH, "a"),
        violation(RECEIVABLE_MISMATCH, "c"),
    ]);
    let (new, logged) = newly_found(&logged, &second);
    assert_eq!(new, [&violation(RECEIVABLE_MISMATCH, "c")]);
    // Gone, then back: logged again.
    let empty = report(vec![]);
    let (new, logged) = newly_found(&logged, &empty);
    assert!(new.is_empty() && logged.is_empty());
    let (new, _) = newly_found(&logged, &first);
    assert_eq!(new.len(), 1);
    // The same kind and subject twice in one report is logged once.
    let twice = report(vec![
        violation(ORPHAN_ENTRY, "e"),
        violation(ORPHAN_ENTRY, "e"),
    ]);
    assert_eq!(newly_found(&HashSet::new(), &twice).0.len(), 1);
}

#[test]
fn amounts_keep_two_places_and_exact_decimals() {
    assert_eq!(money(Decimal::ZERO), "0.00");
    assert_eq!(money("1500.5".parse().unwrap()), "1500.50");
    assert_eq!(money("0.001".parse().unwrap()), "0.001");
    assert_eq!(money("-1.00".parse().unwrap()), "-1.00");
    assert_eq!(
        receivable_detail(
            "INR",
            "2500.00".parse().unwrap(),
            "1000.25".parse().unwrap(),
            "600.00".parse().unwrap(),
            Some("899.75".parse().unwrap()),
        ),
        "INR: command side invoiced 2500.00 - paid 1000.25 - voided 600.00 = 899.75; \
         books (account 1200, party customer) 899.75"
    );
    assert!(
        receivable_detail("INR", Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, None)
            .ends_with("none (no party balance)")
    );
}

#[test]
fn the_events_and_references_audited_are_those_the_ledger_posts() {
    use crate::fixtures::envelope;
    use dhanman_schemas::Event;
    use dhanman_schemas::events::{InvoiceVoided, PaymentFailed};
    let (invoice_id, customer_id) = (Uuid::now_v7(), Uuid::now_v7());
    let amount: Decimal = "10.00".parse().unwrap();
    let invoice = Event::InvoiceCreated(crate::fixtures::invoice(invoice_id, customer_id, "10.00"));
    let void = Event::InvoiceVoided(InvoiceVoided {
        envelope: envelope(),
        invoice_id,
        customer_id,
        amount,
        currency: "INR".into(),
        reason: String::new(),
    });
    let payment_id = Uuid::now_v7();
    let payment = Event::PaymentReceived(PaymentReceived {
        envelope: envelope(),
        payment_id,
        invoice_id: Some(invoice_id),
        customer_id,
        amount,
        currency: "INR".into(),
        method: "cash".into(),
        reference: None,
    });
    for (event, reference_type, reference_id) in [
        (&invoice, REF_INVOICE, invoice_id),
        (&void, REF_INVOICE_VOID, invoice_id),
        (&payment, REF_PAYMENT, payment_id),
    ] {
        let entry = ledger::entry_for(event).expect("an entry");
        assert_eq!(
            (entry.reference_type, entry.reference_id),
            (reference_type, reference_id)
        );
        assert!(POSTING_EVENTS.contains(&event.name()));
    }
    assert!(!POSTING_EVENTS.contains(&<PaymentFailed as Record>::NAME));
    assert_eq!(POSTING_EVENTS.len(), 6);
}
