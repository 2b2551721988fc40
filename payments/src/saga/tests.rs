//! Unit tests of the saga: validation names the bad field, crash points parse, gateway
//! keys are deterministic per saga and distinct per purpose.

use super::request::validate;
use super::*;
use crate::client::Method;

fn input(invoice: Option<Uuid>, method: Option<&str>, reference: Option<&str>) -> NewPayment {
    NewPayment {
        invoice_id: invoice,
        method: method.map(str::to_string),
        reference: reference.map(str::to_string),
    }
}

#[test]
fn validation_names_the_field() {
    let id = Some(Uuid::now_v7());
    let field = |i: NewPayment| validate(&i).unwrap_err().field;
    assert_eq!(field(input(None, Some("upi"), None)), "invoice_id");
    assert_eq!(field(input(id, None, None)), "method");
    assert_eq!(field(input(id, Some("cash"), None)), "method");
    let long = "x".repeat(201);
    assert_eq!(field(input(id, Some("card"), Some(&long))), "reference");
    let (_, method, reference) = validate(&input(id, Some("card"), Some(" "))).unwrap();
    assert_eq!(method, Method::Card);
    assert_eq!(reference, None);
}

#[test]
fn crash_points_parse() {
    assert_eq!(
        CrashPoint::parse("after-charge"),
        Ok(CrashPoint::AfterCharge)
    );
    assert!(CrashPoint::parse("later").is_err());
}

#[test]
fn gateway_keys_are_deterministic_per_saga() {
    let id = Uuid::now_v7();
    assert_eq!(charge_key(id), charge_key(id));
    assert_ne!(charge_key(id), refund_key(id));
    assert_ne!(late_refund_key(id), refund_key(id));
    assert_ne!(late_refund_key(id), charge_key(id));
    assert_ne!(charge_key(id), charge_key(Uuid::now_v7()));
}
