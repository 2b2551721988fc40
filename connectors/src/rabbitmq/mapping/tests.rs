//! The mapping against hostile bodies: missing properties, wrong types, huge and negative
//! amounts, bad dates, unknown types; and our events' C# form read back.
use super::*;

const INVOICE: &str = r#"{"InvoiceId":"3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "CustomerId":"0b6e6f7a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","Amount":3500.10,
    "DueDate":"2026-12-10T00:00:00","CreatedAt":"2026-12-01T09:30:00.1234567+05:30"}"#;

fn invoice_with(field: &str, value: &str) -> String {
    let mut json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(INVOICE).unwrap();
    json.remove(field);
    let mut body = serde_json::to_string(&json).unwrap();
    if !value.is_empty() {
        body.insert_str(body.len() - 1, &format!(r#","{field}":{value}"#));
    }
    body
}

fn reason(type_name: &str, body: &str) -> Unmappable {
    parse(type_name, body.as_bytes()).expect_err(body)
}

#[test]
fn an_invoice_maps_to_the_create_invoice_command_exactly() {
    let Inbound::InvoiceCreated { invoice_id, input } =
        parse("InvoiceCreatedEvent", INVOICE.as_bytes()).unwrap()
    else {
        panic!("not an invoice")
    };
    assert_eq!(
        invoice_id.to_string(),
        "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    );
    assert_eq!(input.amount.unwrap().value().to_string(), "3500.10");
    assert_eq!(input.due_date.unwrap().date().to_string(), "2026-12-10");
    assert_eq!(input.issue_date.unwrap().date().to_string(), "2026-12-01");
    // Beyond what a float holds: the digits are read from the text.
    let body = invoice_with("Amount", "99999999999999.99");
    let Ok(Inbound::InvoiceCreated { input, .. }) = parse("InvoiceCreatedEvent", body.as_bytes())
    else {
        panic!("{body}")
    };
    assert_eq!(
        input.amount.unwrap().value().to_string(),
        "99999999999999.99"
    );
    // camelCase (ASP.NET's web defaults) reads alike, and so does a string amount.
    let camel = r#"{"invoiceId":"3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "customerId":"0b6e6f7a-1c2d-4e5f-8a9b-0c1d2e3f4a5b","amount":"12.5",
        "dueDate":"2026-12-10","createdAt":"2026-12-01T00:00:00Z","Id":7}"#;
    assert!(parse("InvoiceCreatedEvent", camel.as_bytes()).is_ok());
}

#[test]
fn hostile_bodies_are_refused_naming_the_property() {
    let cases = [
        (invoice_with("Amount", ""), "missing field `Amount`"),
        (invoice_with("Amount", r#"true"#), "Amount"),
        (invoice_with("Amount", r#""1e3""#), "Amount"),
        (invoice_with("Amount", "1e400"), "Amount"),
        (invoice_with("Amount", &"9".repeat(5000)), "Amount"),
        (invoice_with("Amount", r#"[1]"#), "Amount"),
        (invoice_with("InvoiceId", r#""not-a-guid""#), "InvoiceId"),
        (
            invoice_with("InvoiceId", r#""00000000-0000-0000-0000-000000000000""#),
            "empty Guid",
        ),
        (invoice_with("InvoiceId", "42"), "InvoiceId"),
        (invoice_with("DueDate", r#""2026-02-30""#), "DueDate"),
        (invoice_with("DueDate", r#""10/12/2026""#), "DueDate"),
        (invoice_with("DueDate", r#""+20260-01-01""#), "DueDate"),
        (invoice_with("DueDate", r#""2026-12-10Tnoon""#), "DueDate"),
        // A multi-byte character across the tenth byte, where the date would end.
        (invoice_with("DueDate", r#""2026-12-0€""#), "DueDate"),
        (
            invoice_with("DueDate", r#""2026-12-1€T00:00:00""#),
            "DueDate",
        ),
        (
            invoice_with("CreatedAt", r#""0001-01-01T00:00:00""#),
            "CreatedAt",
        ),
        ("{".to_string(), "EOF"),
        ("[]".to_string(), "InvoiceCreatedEvent"),
        ("null".to_string(), "invalid type"),
        (format!("{INVOICE} trailing"), "trailing"),
    ];
    for (body, needle) in cases {
        let e = reason("InvoiceCreatedEvent", &body);
        assert_eq!(e.class, "malformed", "{body}");
        assert!(e.reason.contains(needle), "{body}: {}", e.reason);
    }
    let huge = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_BODY));
    assert_eq!(reason("InvoiceCreatedEvent", &huge).class, "too-large");
    let unknown = reason("InvoiceDeletedEvent", INVOICE);
    assert_eq!(unknown.class, "unknown-type");
    assert!(unknown.reason.contains("InvoiceDeletedEvent"));
}

#[test]
fn negative_and_oversized_amounts_reach_the_command_rules() {
    // Signs and scale are the books' rules, checked by the command like the API's.
    let body = invoice_with("Amount", "-5.00");
    let Ok(Inbound::InvoiceCreated { input, .. }) = parse("InvoiceCreatedEvent", body.as_bytes())
    else {
        panic!("{body}")
    };
    let amount = input.amount.unwrap().value();
    assert!(dhanman_schemas::events::check_money("amount", amount, "INR").is_err());
    let body = invoice_with("Amount", "12345678901234567890123456789");
    let Ok(Inbound::InvoiceCreated { input, .. }) = parse("InvoiceCreatedEvent", body.as_bytes())
    else {
        panic!("{body}")
    };
    let amount = input.amount.unwrap().value();
    assert!(dhanman_schemas::events::check_money("amount", amount, "INR").is_err());
}

#[test]
fn the_type_comes_from_the_property_or_the_class_name_in_the_body() {
    assert_eq!(
        type_name(
            Some("Dhanman.Sales.Events.InvoiceCreatedEvent, Dhanman.Sales"),
            b"{}"
        ),
        Some("InvoiceCreatedEvent".into())
    );
    assert_eq!(
        type_name(
            Some("urn:message:Dhanman.Sales:PaymentReceivedEvent"),
            b"{}"
        ),
        Some("PaymentReceivedEvent".into())
    );
    assert_eq!(
        type_name(
            None,
            br#"{"$type":"Dhanman.Purchase.BillCreatedEvent, Purchase"}"#
        ),
        Some("BillCreatedEvent".into())
    );
    assert_eq!(type_name(None, br#"{"$type":5}"#), None);
    assert_eq!(type_name(None, b"not json"), None);
    assert_eq!(type_name(Some(" "), b"{}"), None);
}

#[test]
fn approvals_users_orders_and_commands_map() {
    let user = r#"{"UserId":"7d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f","Email":"cfo@x.example",
        "Name":"Chitra","Role":"CFO"}"#;
    let Ok(Inbound::UserCreated { input, .. }) = parse("UserCreatedEvent", user.as_bytes()) else {
        panic!()
    };
    assert_eq!(input.role.as_deref(), Some("cfo"));
    let po = r#"{"PurchaseOrderId":"7d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f",
        "VendorId":"8d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f","VendorName":"Shree Lifts",
        "RequestedBy":"9d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f",
        "Items":[{"Description":"Lift","Quantity":2147483648,"UnitPrice":1}]}"#;
    let e = reason("POSubmittedEvent", po);
    assert!(e.reason.contains("Items[0].Quantity"), "{}", e.reason);
    let command = r#"{"InvoiceId":"7d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f",
        "CustomerId":"8d0c3f3e-8a4b-4c2d-9e1f-0a1b2c3d4e5f","EmailTemplate":"InvoiceEmail"}"#;
    assert!(parse("SendInvoiceEmailCommand", command.as_bytes()).is_ok());
    let e = reason(
        "SendInvoiceEmailCommand",
        &command.replace("InvoiceEmail", "Marketing"),
    );
    assert!(e.reason.contains("EmailTemplate"), "{}", e.reason);
}

#[test]
fn our_events_leave_as_the_json_dotnet_reads() {
    let org = Uuid::now_v7();
    let customer = Uuid::now_v7();
    let event = dhanman_schemas::events::InvoiceCreated {
        envelope: dhanman_schemas::events::Envelope::new(org, "c-1", None),
        invoice_id: Uuid::now_v7(),
        customer_id: customer,
        invoice_number: "INV-1".into(),
        amount: "99999999999999.99".parse().unwrap(),
        currency: "INR".into(),
        issue_date: "2026-12-01".parse().unwrap(),
        due_date: "2026-12-10".parse().unwrap(),
        description: None,
        period: None,
        tax_amount: None,
    };
    let out = outbound(&Event::InvoiceCreated(event.clone())).unwrap();
    assert_eq!(out.type_name, "InvoiceCreatedEvent");
    assert!(
        out.body.contains(r#""Amount":99999999999999.99"#),
        "{}",
        out.body
    );
    assert!(
        out.body.contains(r#""DueDate":"2026-12-10T00:00:00""#),
        "{}",
        out.body
    );
    // What goes out comes back in as the same command.
    let Ok(Inbound::InvoiceCreated { invoice_id, input }) =
        parse(out.type_name, out.body.as_bytes())
    else {
        panic!("{}", out.body)
    };
    assert_eq!(invoice_id, event.invoice_id);
    assert_eq!(input.customer_id, Some(customer));
    assert_eq!(input.amount.unwrap().value(), event.amount);
}
