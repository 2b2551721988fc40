use super::*;

fn user(role: &str, email: &str) -> Event {
    Event::UserCreated(UserCreated {
        envelope: Envelope::new(Uuid::now_v7(), "corr", None),
        user_id: Uuid::now_v7(),
        email: email.into(),
        name: "Asha".into(),
        role: role.into(),
    })
}

fn order(steps: &[&str]) -> Event {
    Event::POSubmitted(POSubmitted {
        envelope: Envelope::new(Uuid::now_v7(), "corr", None),
        po_id: Uuid::now_v7(),
        vendor_id: Uuid::now_v7(),
        requester_id: Uuid::now_v7(),
        amount: Decimal::new(100, 0),
        currency: "INR".into(),
        items: vec![],
        required_approvers: steps.iter().map(|s| s.to_string()).collect(),
    })
}

fn refused(event: &Event) -> String {
    event.validate().unwrap_err().to_string()
}

#[test]
fn no_event_carries_the_nil_id() {
    let mut event = user("admin", "asha@example.org");
    assert!(event.validate().is_ok());
    if let Event::UserCreated(u) = &mut event {
        u.envelope.event_id = Uuid::nil();
    }
    assert!(refused(&event).contains("event_id"), "{}", refused(&event));
    if let Event::UserCreated(u) = &mut event {
        u.envelope.event_id = Uuid::now_v7();
        u.envelope.organization_id = Uuid::nil();
    }
    assert!(refused(&event).contains("organization_id"));
}

#[test]
fn an_order_needs_each_known_approval_once() {
    assert!(order(&[]).validate().is_ok());
    assert!(order(&["manager", "cfo"]).validate().is_ok());
    assert!(refused(&order(&["manager", "manager"])).contains("required_approvers[1]"));
    assert!(refused(&order(&["treasurer"])).contains("required_approvers[0]"));
}

#[test]
fn a_user_has_a_known_role_and_an_address() {
    assert!(refused(&user("owner", "asha@example.org")).contains("role"));
    for email in [
        "",
        "asha",
        "a@b@c",
        "asha @example.org",
        "@example.org",
        "asha@",
    ] {
        assert!(
            refused(&user("admin", email)).contains("email"),
            "{email:?}"
        );
    }
}

#[test]
fn text_that_acts_rather_than_reads_is_refused_naming_the_character() {
    let line = |v: &str| check_text("name", v, 10, Breaks::Refused);
    let lines = |v: &str| check_text("reason", v, 10, Breaks::Allowed);
    for kept in ["Asha Rao", "ആശ\u{200D}", "Zoë", "a\u{200C}b", "ten chars!"] {
        assert_eq!(line(kept), Ok(()), "{kept:?}");
    }
    for (acting, found) in [
        ("a\nb", "U+000A"),
        ("a\r", "U+000D"),
        ("a\tb", "U+0009"),
        ("bell\u{7}", "U+0007"),
        ("\u{1b}[2J", "U+001B"),
        ("del\u{7f}", "U+007F"),
        ("c1\u{85}", "U+0085"),
        ("\u{202E}ahsA", "U+202E"),
        ("\u{2067}x\u{2069}", "U+2067"),
        ("rtl\u{200F}", "U+200F"),
        ("ls\u{2028}", "U+2028"),
    ] {
        let e = line(acting).unwrap_err();
        assert_eq!(e.field, "name");
        assert!(e.message.contains(found), "{acting:?}: {}", e.message);
    }
    assert_eq!(lines("two\r\nlines"), Ok(()));
    assert_eq!(lines("a\tb\u{2029}"), Ok(()));
    assert!(lines("a\u{0}b").is_err());
    assert!(lines("\u{202D}x").is_err());
    let long = line("eleven char").unwrap_err();
    assert!(long.message.contains("at most 10 characters"), "{long}");
    // Counted in characters, not bytes: ten Devanagari letters fit.
    assert_eq!(line(&"क".repeat(10)), Ok(()));
}

#[test]
fn a_users_name_is_one_line_of_plain_text() {
    let mut event = user("admin", "asha@example.org");
    if let Event::UserCreated(u) = &mut event {
        u.name = "Asha\r\nRao".into();
    }
    assert!(refused(&event).contains("name"), "{}", refused(&event));
}

#[test]
fn a_period_is_a_month_in_the_years_of_the_books() {
    for period in ["1900-01", "2026-12", "9999-12"] {
        assert!(check_period("period", period).is_ok(), "{period}");
    }
    for period in [
        "0000-01", "1899-12", "2026-13", "2026-1", "+202-01", "10000-01",
    ] {
        let refused = check_period("period", period).unwrap_err().to_string();
        assert!(refused.starts_with("period: must"), "{period}: {refused}");
    }
    assert!(
        check_period("period", "0000-01")
            .unwrap_err()
            .to_string()
            .contains("1900 through 9999")
    );
}

#[test]
fn a_currency_is_money_by_its_iso_4217_code() {
    for code in ["INR", "USD", "EUR", "JPY", "HRK"] {
        assert!(check_currency(code).is_ok(), "{code}");
    }
    for code in ["ABC", "XXX", "XTS", "XAU", "inr", "INRS", "IN", ""] {
        let refused = check_currency(code).unwrap_err().to_string();
        assert!(
            refused.starts_with("currency: must be an ISO 4217"),
            "{code}: {refused}"
        );
    }
}

#[test]
fn an_amount_has_no_more_places_than_its_currency() {
    let amount = |a: &str| a.parse::<Decimal>().unwrap();
    assert!(check_money("amount", amount("1500.50"), "INR").is_ok());
    assert!(check_money("amount", amount("1500"), "JPY").is_ok());
    assert!(
        check_money("amount", amount("1500.00"), "JPY").is_ok(),
        "zeros are no places"
    );
    assert!(check_money("amount", amount("1.25"), "KWD").is_ok());
    let refused = check_money("amount", amount("1500.5"), "JPY").unwrap_err();
    assert_eq!(
        refused.to_string(),
        "amount: must have at most 0 decimal places in JPY"
    );
    assert_eq!(
        (minor_units("JPY"), minor_units("INR"), minor_units("KWD")),
        (0, 2, 2)
    );
}
