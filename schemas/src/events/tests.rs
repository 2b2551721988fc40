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
