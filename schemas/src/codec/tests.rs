use super::*;
use crate::events::{Envelope, InvoiceCreated};
use serde_json::Value as Json;

fn invoice() -> InvoiceCreated {
    InvoiceCreated {
        envelope: Envelope::new(uuid::Uuid::now_v7(), "corr-1", None),
        invoice_id: uuid::Uuid::now_v7(),
        customer_id: uuid::Uuid::now_v7(),
        invoice_number: "INV-1".into(),
        amount: "1234.50".parse().unwrap(),
        currency: "INR".into(),
        issue_date: "2026-12-01".parse().unwrap(),
        due_date: "2026-12-15".parse().unwrap(),
        description: Some("December maintenance".into()),
        period: Some("2026-12".into()),
        tax_amount: None,
    }
}

/// `InvoiceCreated`'s two local versions.
fn invoice_versions() -> (&'static RecordSchema, &'static RecordSchema) {
    let catalog = Catalog::global();
    let version = |v| catalog.get(InvoiceCreated::NAME, v).unwrap();
    (version(1), version(2))
}

/// The datum apache-avro's writer makes of the JSON's Avro value ([`json::to_avro`]).
fn apache_writer(json: &Json, schema: &apache_avro::Schema) -> Result<Vec<u8>> {
    let value = json::to_avro(json, schema, "")?;
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// `json` written by [`json::write_avro`].
fn written(json: &Json, schema: &apache_avro::Schema) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    json::write_avro(json, schema, "", &mut out).map(|()| out)
}

#[test]
fn json_is_written_as_apache_avros_writer_writes_its_value_or_refused_alike() {
    let schema = apache_avro::Schema::parse_str(
        r#"{"type": "record", "name": "T", "fields": [
            {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "n", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}},
            {"name": "note", "type": ["null", "string"], "default": null},
            {"name": "ok", "type": "boolean", "default": true},
            {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "L", "fields": [
                {"name": "code", "type": "string"},
                {"name": "credit", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}]}
            ]}}}
        ]}"#,
    )
    .unwrap();
    let base = serde_json::json!({
        "id": "0190f2a0-5b1e-7c3d-8e4f-a1b2c3d4e5f6", "n": -129, "big": 9_007_199_254_740_993i64,
        "at": 1_765_000_000_123i64, "day": "1969-12-31", "amount": "-128.00",
        "note": "é ✓", "lines": [{"code": "1200", "credit": "0.01"}, {"code": "", "credit": null}]
    });
    let with = |field: &str, value: Json| {
        let mut json = base.clone();
        match value {
            Json::Null if field.starts_with('-') => {
                json.as_object_mut().unwrap().remove(&field[1..]);
            }
            value => json[field] = value,
        }
        json
    };
    let accepted = [
        base.clone(),
        with("id", "0190F2A0-5B1E-7C3D-8E4F-A1B2C3D4E5F6".into()),
        with("-note", Json::Null),
        with("note", Json::Null),
        with("ok", false.into()),
        with("lines", serde_json::json!([])),
        with("amount", "99999999999999.99".into()),
        with("amount", 12.5.into()),
        with("at", "2026-12-07T12:00:00.5+05:30".into()),
        with("n", i32::MIN.into()),
        with("day", "9999-12-31".into()),
    ];
    for json in &accepted {
        assert_eq!(
            written(json, &schema).unwrap(),
            apache_writer(json, &schema).unwrap(),
            "{json}"
        );
    }
    let refused = [
        (with("id", "not-a-uuid".into()), "id: expected a UUID"),
        (
            with("n", 2_147_483_648i64.into()),
            "n: integer out of range",
        ),
        (
            with("amount", "0.005".into()),
            "amount: has more than 2 decimal places",
        ),
        (
            with("amount", serde_json::json!(["1"])),
            "amount: expected a decimal amount",
        ),
        (
            with("day", "2026-13-01".into()),
            "day: expected a date as YYYY-MM-DD",
        ),
        (with("-big", Json::Null), "big: is required"),
        (with("note", 5.into()), "note: expected a string"),
        (
            with(
                "lines",
                serde_json::json!([{"code": "1"}, {"code": 2, "credit": null}]),
            ),
            "lines/0.credit: is required",
        ),
        (
            with(
                "lines",
                serde_json::json!([{"code": "1", "credit": null}, {"code": 2, "credit": null}]),
            ),
            "lines/1.code: expected a string",
        ),
        (serde_json::json!([1]), ": expected an object"),
    ];
    for (json, reason) in &refused {
        let error = written(json, &schema).unwrap_err().to_string();
        assert!(error.ends_with(reason), "{json}: {error}");
        assert_eq!(error, apache_writer(json, &schema).unwrap_err().to_string());
    }
}

fn read_datum(schema: &apache_avro::Schema, mut bytes: &[u8]) -> apache_avro::types::Value {
    apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .unwrap()
        .read_value(&mut bytes)
        .unwrap()
}

#[test]
fn frames_start_with_magic_and_id_and_decode_back_through_json() {
    let (_, v2) = invoice_versions();
    let event = invoice();
    let json = serde_json::to_value(&event).unwrap();
    let framed = encode_with_id(v2, 42, &json).unwrap();
    assert_eq!(&framed[..5], &[0, 0, 0, 0, 42]);
    assert_eq!(wire_schema_id(&framed).unwrap(), 42);

    let value = read_datum(&v2.schema, &framed[5..]);
    let back = json::from_avro(&value, &v2.schema, "").unwrap();
    let decoded: InvoiceCreated = serde_json::from_value(back).unwrap();
    assert_eq!(decoded, event);
}

#[test]
fn v1_records_resolve_to_v2_with_defaults() {
    let (v1, v2) = invoice_versions();
    let mut event = invoice();
    let json = serde_json::to_value(&event).unwrap();
    let framed = encode_with_id(v1, 7, &json).unwrap();
    let value = read_datum(&v1.schema, &framed[5..]);
    // The bug this path avoids: apache-avro's own resolution refuses the decimal.
    assert!(value.clone().resolve(&v2.schema).is_err());
    let resolved = resolve(&value, &v1.schema, &v2.schema).unwrap();
    let decoded: InvoiceCreated = serde_json::from_value(resolved).unwrap();
    event.description = None;
    event.period = None;
    assert_eq!(decoded, event);
}

#[test]
fn only_schemas_alike_in_every_attribute_skip_resolution() {
    let (v1, v2) = invoice_versions();
    assert!(identical(&v2.schema, &v2.schema));
    assert!(!identical(&v1.schema, &v2.schema));
    // Canonical forms drop defaults (and logical type names); resolution does not.
    let parse = |field: &str| {
        apache_avro::Schema::parse_str(&format!(
            r#"{{"type": "record", "name": "T", "fields": [{field}]}}"#
        ))
        .unwrap()
    };
    let plain = parse(r#"{"name": "a", "type": "bytes"}"#);
    let decimal = parse(
        r#"{"name": "a", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}}"#,
    );
    let defaulted = parse(r#"{"name": "a", "type": "bytes", "default": "x"}"#);
    assert_eq!(plain.canonical_form(), defaulted.canonical_form());
    assert!(!identical(&plain, &decimal));
    assert!(!identical(&plain, &defaulted));
}

/// Encodes a typed record with its schema, reads it back, and decodes it as the same
/// typed event: the Rust types and the `.avsc` files agree field for field.
fn round_trip<R: crate::events::Record>(record: &R) -> crate::Event {
    let schema = Catalog::global().latest(R::NAME).unwrap();
    let json = serde_json::to_value(record).unwrap();
    let framed = encode_with_id(schema, 1, &json).unwrap();
    // Written as the JSON is walked: the bytes apache-avro's writer makes of the value.
    assert_eq!(
        &framed[5..],
        apache_writer(&json, &schema.schema).unwrap(),
        "{}",
        R::NAME
    );
    // Serialized straight from the record: the same bytes, or refused (a `date`, whose
    // Rust form is text), never other bytes.
    match schema.datum(record) {
        Ok(datum) => assert_eq!(datum, &framed[5..], "{}", R::NAME),
        Err(e) => assert!(e.to_string().contains("Date"), "{}: {e}", R::NAME),
    }
    assert_eq!(
        schema.datum_json(&framed[5..]).unwrap(),
        json,
        "{}",
        R::NAME
    );
    let value = read_datum(&schema.schema, &framed[5..]);
    let back = json::from_avro(&value, &schema.schema, "").unwrap();
    assert_eq!(back, json, "{}", R::NAME);
    let typed = crate::Event::from_json(R::NAME, back).unwrap();
    assert_eq!(
        crate::Event::from_avro(R::NAME, &value, &schema.schema).unwrap(),
        typed,
        "{} read from its Avro value as from its JSON",
        R::NAME
    );
    assert_eq!(
        crate::Event::from_datum(R::NAME, &framed[5..], &schema.schema).unwrap(),
        typed,
        "{} read straight from its datum as from its JSON",
        R::NAME
    );
    typed
}

#[test]
fn purchase_user_and_payment_records_round_trip_as_typed_events() {
    use crate::Event;
    use crate::events::*;
    use uuid::Uuid;
    let envelope = || Envelope::new(Uuid::now_v7(), "corr-2", Some("cause".into()));
    let amount: rust_decimal::Decimal = "60500.25".parse().unwrap();
    let submitted = POSubmitted {
        envelope: envelope(),
        po_id: Uuid::now_v7(),
        vendor_id: Uuid::now_v7(),
        requester_id: Uuid::now_v7(),
        amount,
        currency: "INR".into(),
        items: vec![PoItem {
            description: "Pump".into(),
            quantity: 2,
            unit_price: "30250.13".parse().unwrap(),
        }],
        required_approvers: vec!["manager".into(), "cfo".into()],
    };
    assert_eq!(
        round_trip(&submitted),
        Event::POSubmitted(submitted.clone())
    );
    let approved = POApproved {
        envelope: envelope(),
        po_id: submitted.po_id,
        vendor_id: submitted.vendor_id,
        requester_id: submitted.requester_id,
        amount,
        currency: "INR".into(),
        approved_by: vec![Uuid::now_v7(), Uuid::now_v7()],
    };
    assert_eq!(round_trip(&approved), Event::POApproved(approved.clone()));
    let rejected = PORejected {
        envelope: envelope(),
        po_id: submitted.po_id,
        vendor_id: submitted.vendor_id,
        requester_id: submitted.requester_id,
        amount,
        currency: "INR".into(),
        rejected_by: Uuid::now_v7(),
        reason: "over budget".into(),
    };
    assert_eq!(round_trip(&rejected), Event::PORejected(rejected.clone()));
    for po_id in [None, Some(submitted.po_id)] {
        let bill = BillCreated {
            envelope: envelope(),
            bill_id: Uuid::now_v7(),
            vendor_id: submitted.vendor_id,
            po_id,
            amount,
            currency: "INR".into(),
            description: "Pump, installed".into(),
            due_date: "2026-12-31".parse().unwrap(),
        };
        assert_eq!(round_trip(&bill), Event::BillCreated(bill.clone()));
    }
    let user = UserCreated {
        envelope: envelope(),
        user_id: Uuid::now_v7(),
        email: "cfo@society.example".into(),
        name: "Chitra".into(),
        role: "cfo".into(),
    };
    assert_eq!(round_trip(&user), Event::UserCreated(user.clone()));
    let failed = PaymentFailed {
        envelope: envelope(),
        payment_id: Uuid::now_v7(),
        invoice_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        amount,
        currency: "INR".into(),
        reason: "card declined".into(),
    };
    assert_eq!(round_trip(&failed), Event::PaymentFailed(failed.clone()));
    let request = SendApprovalRequest {
        envelope: envelope(),
        po_id: submitted.po_id,
        approver_role: "cfo".into(),
        approver_id: Some(Uuid::now_v7()),
        recipient: "cfo@society.example".into(),
        amount,
        currency: "INR".into(),
    };
    assert_eq!(
        round_trip(&request),
        Event::SendApprovalRequest(request.clone())
    );
    let email = SendInvoiceEmail {
        envelope: envelope(),
        invoice_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        recipient: "asha@example.org".into(),
        amount,
        currency: "INR".into(),
        due_date: "2026-12-10".parse().unwrap(),
        template: Some("invoice".into()),
    };
    assert_eq!(round_trip(&email), Event::SendInvoiceEmail(email.clone()));
    let v1_copy = SendInvoiceEmail {
        template: None,
        ..email.clone()
    };
    assert_eq!(
        round_trip(&v1_copy),
        Event::SendInvoiceEmail(v1_copy.clone())
    );
    let reminder = SendPaymentReminder {
        envelope: envelope(),
        invoice_id: email.invoice_id,
        customer_id: email.customer_id,
        recipient: email.recipient.clone(),
        amount,
        currency: "INR".into(),
        due_date: email.due_date,
    };
    assert_eq!(
        round_trip(&reminder),
        Event::SendPaymentReminder(reminder.clone())
    );
    let receipt = SendPaymentReceipt {
        envelope: envelope(),
        payment_id: Uuid::now_v7(),
        invoice_id: None,
        customer_id: email.customer_id,
        recipient: email.recipient.clone(),
        amount,
        currency: "INR".into(),
    };
    assert_eq!(
        round_trip(&receipt),
        Event::SendPaymentReceipt(receipt.clone())
    );
}

#[test]
fn sales_salary_and_ledger_records_round_trip_as_typed_events() {
    use crate::Event;
    use crate::events::*;
    use uuid::Uuid;
    let envelope = || Envelope::new(Uuid::now_v7(), "corr-3", Some("cause".into()));
    let taxed = InvoiceCreated {
        tax_amount: Some("-0.01".parse().unwrap()),
        description: None,
        ..invoice()
    };
    for invoice in [invoice(), taxed] {
        assert_eq!(round_trip(&invoice), Event::InvoiceCreated(invoice.clone()));
    }
    let voided = InvoiceVoided {
        envelope: envelope(),
        invoice_id: Uuid::now_v7(),
        customer_id: Uuid::now_v7(),
        amount: "99999999999999.99".parse().unwrap(),
        currency: "INR".into(),
        reason: "issued twice \u{2014} \"quoted\"".into(),
    };
    assert_eq!(round_trip(&voided), Event::InvoiceVoided(voided.clone()));
    for (invoice_id, reference) in [(None, None), (Some(Uuid::now_v7()), Some("UTR-1".into()))] {
        let payment = PaymentReceived {
            envelope: envelope(),
            payment_id: Uuid::now_v7(),
            invoice_id,
            customer_id: Uuid::now_v7(),
            amount: "0.01".parse().unwrap(),
            currency: "INR".into(),
            method: "upi".into(),
            reference,
        };
        assert_eq!(
            round_trip(&payment),
            Event::PaymentReceived(payment.clone())
        );
    }
    let salary = SalaryPosted {
        envelope: Envelope::new(Uuid::now_v7(), "", None),
        salary_id: Uuid::now_v7(),
        employee_id: Uuid::now_v7(),
        period: "2026-11".into(),
        amount: "25000.00".parse().unwrap(),
        currency: "INR".into(),
    };
    assert_eq!(round_trip(&salary), Event::SalaryPosted(salary.clone()));
    let line = |party: Option<Uuid>, debit: &str, credit: &str| PostingLine {
        account_code: if party.is_some() { "1100" } else { "4000" }.into(),
        party_type: party.map(|_| "customer".into()),
        party_id: party,
        debit: debit.parse().unwrap(),
        credit: credit.parse().unwrap(),
    };
    let posted = LedgerEntryPosted {
        envelope: envelope(),
        entry_id: Uuid::now_v7(),
        source_event_id: Uuid::now_v7(),
        reference_type: "invoice".into(),
        reference_id: Uuid::now_v7(),
        description: "Invoice INV-1".into(),
        currency: "INR".into(),
        lines: vec![
            line(Some(Uuid::now_v7()), "1234.50", "0.00"),
            line(None, "0.00", "1234.50"),
        ],
    };
    assert_eq!(
        round_trip(&posted),
        Event::LedgerEntryPosted(posted.clone())
    );
    // The ledger keeps its announcements as their datum.
    let schema = Catalog::global().latest(LedgerEntryPosted::NAME).unwrap();
    assert!(schema.datum(&posted).is_ok());
}

#[test]
fn garbage_is_undecodable_not_transient() {
    for bytes in [&b""[..], b"\x01\x00\x00\x00\x01abc", b"\x00\x00"] {
        let err = wire_schema_id(bytes).unwrap_err();
        assert!(!err.is_transient());
        assert!(matches!(err, Error::Undecodable(_)));
    }
}
