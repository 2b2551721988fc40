//! Email templates: MiniJinja sources with a subject, a text part and an HTML part each.
//!
//! The defaults are the files under `templates/<name>/` at the repository root, embedded in
//! the binary. An organization overrides any part by putting a file at
//! `DHANMAN_TEMPLATE_DIR/<organization_id>/<name>.{subject,txt,html}`; parts it does not
//! override keep the default. Variables a template names but the context lacks are
//! errors (strict undefined), so a typo in an override is caught, not sent blank.

use std::path::PathBuf;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value as Json;
use uuid::Uuid;

/// Every template the notifier sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    Invoice,
    Receipt,
    Reminder,
    ApprovalRequest,
    PoDecided,
    Payslip,
    Welcome,
}

impl Template {
    pub const ALL: [Template; 7] = [
        Template::Invoice,
        Template::Receipt,
        Template::Reminder,
        Template::ApprovalRequest,
        Template::PoDecided,
        Template::Payslip,
        Template::Welcome,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Template::Invoice => "invoice",
            Template::Receipt => "receipt",
            Template::Reminder => "reminder",
            Template::ApprovalRequest => "approval_request",
            Template::PoDecided => "po_decided",
            Template::Payslip => "payslip",
            Template::Welcome => "welcome",
        }
    }

    /// The embedded default of one part.
    fn default_source(self, part: Part) -> &'static str {
        macro_rules! parts {
            ($name:literal) => {
                match part {
                    Part::Subject => {
                        include_str!(concat!(
                            "../../../templates/",
                            $name,
                            "/",
                            $name,
                            ".subject"
                        ))
                    }
                    Part::Text => {
                        include_str!(concat!("../../../templates/", $name, "/", $name, ".txt"))
                    }
                    Part::Html => {
                        include_str!(concat!("../../../templates/", $name, "/", $name, ".html"))
                    }
                }
            };
        }
        match self {
            Template::Invoice => parts!("invoice"),
            Template::Receipt => parts!("receipt"),
            Template::Reminder => parts!("reminder"),
            Template::ApprovalRequest => parts!("approval_request"),
            Template::PoDecided => parts!("po_decided"),
            Template::Payslip => parts!("payslip"),
            Template::Welcome => parts!("welcome"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Subject,
    Text,
    Html,
}

impl Part {
    fn extension(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Text => "txt",
            Part::Html => "html",
        }
    }
}

/// A message's rendered parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The templates, with an optional directory of per-organization overrides.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    override_dir: Option<PathBuf>,
}

impl Templates {
    pub fn new(override_dir: Option<PathBuf>) -> Self {
        Templates { override_dir }
    }

    /// Renders the three parts of `template` for `organization_id`. An error names the
    /// template part and what is wrong with it; it is final (the same input fails again).
    pub fn render(
        &self,
        organization_id: Uuid,
        template: Template,
        context: &Json,
    ) -> Result<Rendered, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let ctx = minijinja::Value::from_serialize(context);
        let render = |part: Part| -> Result<String, String> {
            let source = self.source(organization_id, template, part)?;
            let name = format!("{}.{}", template.name(), part.extension());
            env.render_named_str(&name, &source, &ctx)
                .map_err(|e| format!("template {name}: {e:#}"))
        };
        let subject = render(Part::Subject)?;
        let text = render(Part::Text)?;
        let html = render(Part::Html)?;
        // A subject is one header line, whatever an override's file ends with.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        if subject.is_empty() {
            return Err(format!(
                "template {}.subject: renders empty",
                template.name()
            ));
        }
        Ok(Rendered {
            subject,
            text: ensure_newline(text),
            html: ensure_newline(html),
        })
    }

    fn source(
        &self,
        organization_id: Uuid,
        template: Template,
        part: Part,
    ) -> Result<String, String> {
        if let Some(dir) = &self.override_dir {
            let path = dir.join(organization_id.to_string()).join(format!(
                "{}.{}",
                template.name(),
                part.extension()
            ));
            match std::fs::read_to_string(&path) {
                Ok(source) => return Ok(source),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            }
        }
        Ok(template.default_source(part).to_string())
    }
}

fn ensure_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// An amount as the emails show it: the ISO currency code, a space, the amount rounded to
/// two places (half away from zero) with thousands grouped in threes by commas for every
/// currency: `INR 1,500.50`, `INR 150,000.00` (not the Indian `1,50,000.00`), and a
/// negative amount is `INR -12.00`. The code rather than a symbol keeps every message plain ASCII (so its
/// parts travel as 7bit) and unambiguous across currencies that share a symbol.
pub fn format_money(amount: Decimal, currency: &str) -> String {
    let rounded = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let text = format!("{:.2}", rounded.abs());
    let (whole, cents) = text.split_once('.').unwrap_or((&text, "00"));
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if rounded.is_sign_negative() && !rounded.is_zero() {
        "-"
    } else {
        ""
    };
    format!("{} {sign}{grouped}.{cents}", currency.trim().to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::str::FromStr;

    fn money(s: &str, currency: &str) -> String {
        format_money(Decimal::from_str(s).unwrap(), currency)
    }

    #[test]
    fn amounts_have_code_grouping_and_two_places() {
        assert_eq!(money("1500.5", "INR"), "INR 1,500.50");
        assert_eq!(money("0", "INR"), "INR 0.00");
        assert_eq!(money("999.999", "INR"), "INR 1,000.00");
        assert_eq!(money("150000", "inr"), "INR 150,000.00");
        assert_eq!(money("1234567.891", "USD"), "USD 1,234,567.89");
        assert_eq!(money("100", "INR"), "INR 100.00");
        assert_eq!(money("-12", "INR"), "INR -12.00");
        assert_eq!(money("0.005", "INR"), "INR 0.01");
    }

    fn context(template: Template) -> Json {
        let common = json!({"organization_name": "Lotus <Towers>", "recipient": "a@b.c"});
        let mut c = match template {
            Template::Invoice => json!({"customer_name": "Asha", "invoice_number": "INV-1",
                "amount": "INR 1,500.50", "issue_date": "2026-12-01", "due_date": "2026-12-10",
                "description": null, "resent": false}),
            Template::Receipt => json!({"customer_name": "Asha", "amount": "INR 1.00",
                "method": "upi", "reference": null, "invoice_number": null}),
            Template::Reminder => json!({"customer_name": "Asha", "invoice_number": "INV-1",
                "amount": "INR 1.00", "due_date": "2026-12-10"}),
            Template::ApprovalRequest => json!({"requester_name": "Ravi", "approver_role": "cfo",
                "vendor_name": "Shree Lifts", "amount": "INR 1.00", "po_id": "x"}),
            Template::PoDecided => json!({"requester_name": "Ravi", "decision": "rejected",
                "vendor_name": "Shree Lifts", "amount": "INR 1.00", "po_id": "x",
                "reason": "too dear"}),
            Template::Payslip => json!({"employee_name": "Meena", "period": "2026-12",
                "amount": "INR 1.00"}),
            Template::Welcome => json!({"name": "Ravi", "role": "manager",
                "invitation_token": format!("dhi_{}", "0123456789abcdef".repeat(4)),
                "invitation_expires_at": "2026-12-10 09:30 UTC"}),
        };
        if let (Some(c), Json::Object(common)) = (c.as_object_mut(), common) {
            c.extend(common);
        }
        c
    }

    #[test]
    fn every_default_renders_with_its_context() {
        let templates = Templates::default();
        for template in Template::ALL {
            let r = templates
                .render(Uuid::nil(), template, &context(template))
                .unwrap_or_else(|e| panic!("{}: {e}", template.name()));
            assert!(!r.subject.contains('\n'));
            assert!(
                r.text.is_ascii() && r.html.is_ascii(),
                "{}",
                template.name()
            );
            // 7bit needs short lines; HTML escapes what the context brings.
            for line in r.text.lines().chain(r.html.lines()) {
                assert!(line.len() <= 76, "{}: {line:?}", template.name());
            }
            assert!(r.html.contains("Lotus &lt;Towers&gt;"), "{}", r.html);
            assert!(r.text.contains("Lotus <Towers>"), "{}", r.text);
        }
    }

    #[test]
    fn invoice_text_is_exact() {
        let r = Templates::default()
            .render(Uuid::nil(), Template::Invoice, &context(Template::Invoice))
            .unwrap();
        assert_eq!(
            r.subject,
            "Invoice INV-1 from Lotus <Towers>: INR 1,500.50 due 2026-12-10"
        );
        assert_eq!(
            r.text,
            "Dear Asha,\n\nLotus <Towers> has issued invoice INV-1.\n\nAmount: INR 1,500.50\n\
             Issued: 2026-12-01\nDue:    2026-12-10\n\nPlease pay by the due date.\n\n\
             Lotus <Towers>\n"
        );
    }

    #[test]
    fn a_welcome_shows_the_invitation_token_only_when_there_is_one() {
        let token = format!("dhi_{}", "0123456789abcdef".repeat(4));
        let invited = Templates::default()
            .render(Uuid::nil(), Template::Welcome, &context(Template::Welcome))
            .unwrap();
        assert_eq!(
            invited.text,
            format!(
                "Dear Ravi,\n\nYou have been added to Lotus <Towers> on Dhanman as manager.\n\n\
                 Your invitation code (valid until 2026-12-10 09:30 UTC, usable once):\n\n    \
                 {token}\n\nExchange it for your API key, which only you will ever see:\n\n    \
                 POST /v1/invitations/accept   {{\"token\": \"<the code above>\"}}\n\n\
                 No key is needed for that request. Nobody else has your key: keep it\n\
                 secret, and rotate it with POST /v1/keys/{{id}}/rotate if it may have leaked.\n\n\
                 Lotus <Towers>\n"
            )
        );
        assert!(
            invited.html.contains(&format!("<pre>\n{token}\n</pre>")),
            "{}",
            invited.html
        );
        // The organization's first administrator has a key already: no invitation.
        let mut ctx = context(Template::Welcome);
        ctx["invitation_token"] = Json::Null;
        ctx["invitation_expires_at"] = Json::Null;
        let plain = Templates::default()
            .render(Uuid::nil(), Template::Welcome, &ctx)
            .unwrap();
        assert_eq!(
            plain.text,
            "Dear Ravi,\n\nYou have been added to Lotus <Towers> on Dhanman as manager.\n\n\
             Lotus <Towers>\n"
        );
        assert!(!plain.html.contains("invitation"), "{}", plain.html);
    }

    #[test]
    fn organization_overrides_replace_only_their_parts() {
        let dir = std::env::temp_dir().join(format!("dhanman-templates-{}", Uuid::new_v4()));
        let org = Uuid::new_v4();
        std::fs::create_dir_all(dir.join(org.to_string())).unwrap();
        std::fs::write(
            dir.join(org.to_string()).join("welcome.subject"),
            "Namaste {{ name }}\n",
        )
        .unwrap();
        let templates = Templates::new(Some(dir.clone()));
        let ctx = context(Template::Welcome);
        let overridden = templates.render(org, Template::Welcome, &ctx).unwrap();
        assert_eq!(overridden.subject, "Namaste Ravi");
        let default = Templates::default()
            .render(org, Template::Welcome, &ctx)
            .unwrap();
        assert_eq!(overridden.text, default.text);
        // Another organization keeps the default subject.
        let other = templates
            .render(Uuid::new_v4(), Template::Welcome, &ctx)
            .unwrap();
        assert_eq!(other.subject, default.subject);
        // A variable the context lacks is an error, not a blank.
        std::fs::write(dir.join(org.to_string()).join("welcome.txt"), "{{ nmae }}").unwrap();
        let err = templates.render(org, Template::Welcome, &ctx).unwrap_err();
        assert!(err.contains("welcome.txt"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
