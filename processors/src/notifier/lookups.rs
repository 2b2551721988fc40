//! What the notifier reads from the command side to write an email: organization names,
//! customers, invoices (once per batch, [`Lookups`]), purchase orders and people.

use std::collections::HashMap;

use chrono::NaiveDate;
use dhanman_schemas::Event;
use sqlx::PgConnection;
use uuid::Uuid;

use super::Recipient;

/// What a batch's emails read from the command side (organization names, customers,
/// invoices), each read once per batch: those of the batch's invoice emails, payment
/// reminders and receipts in one query per table before it is planned
/// ([`Lookups::of_batch`]), any other on its first use. One that is not there reads as what
/// an email says without it.
#[derive(Default)]
pub(super) struct Lookups {
    organizations: HashMap<Uuid, String>,
    customers: HashMap<(Uuid, Uuid), Customer>,
    invoices: HashMap<(Uuid, Uuid), InvoiceFacts>,
}

impl Lookups {
    pub(super) async fn of_batch(
        conn: &mut PgConnection,
        events: &[&Event],
    ) -> Result<Self, sqlx::Error> {
        let mut lookups = Lookups::default();
        // A receipt names an invoice only when its payment was for one.
        let parties: Vec<(Uuid, Uuid, Option<Uuid>)> = events
            .iter()
            .filter_map(|event| {
                let org = event.envelope().organization_id;
                match event {
                    Event::SendInvoiceEmail(c) => Some((org, c.customer_id, Some(c.invoice_id))),
                    Event::SendPaymentReminder(c) => Some((org, c.customer_id, Some(c.invoice_id))),
                    Event::PaymentReceived(e) => Some((org, e.customer_id, e.invoice_id)),
                    Event::SendPaymentReceipt(c) => Some((org, c.customer_id, c.invoice_id)),
                    _ => None,
                }
            })
            .collect();
        if parties.is_empty() {
            return Ok(lookups);
        }
        let orgs: Vec<Uuid> = parties.iter().map(|p| p.0).collect();
        let customers: Vec<Uuid> = parties.iter().map(|p| p.1).collect();
        let (invoice_orgs, invoices): (Vec<Uuid>, Vec<Uuid>) = parties
            .iter()
            .filter_map(|&(org, _, invoice)| Some((org, invoice?)))
            .unzip();
        // The customers and invoices are joined to the batch's arrays by a statement planned
        // for each batch (`persistent(false)`): planned once for any batch, Postgres keeps the
        // plan the tables' sizes of that moment called for, and for tables small then that
        // is a hash of the batch against a read of the whole table, however large it grows
        // before its statistics are renewed.
        let names: Vec<(Uuid, String)> =
            sqlx::query_as("select id, name from organizations where id = any($1)")
                .bind(&orgs)
                .fetch_all(&mut *conn)
                .await?;
        lookups.organizations.extend(names);
        let found: Vec<(Uuid, Uuid, String, Option<String>)> = sqlx::query_as(
            "select c.organization_id, c.id, c.name, c.email
               from customers c join unnest($1::uuid[], $2::uuid[]) as k(org, id)
                 on c.organization_id = k.org and c.id = k.id",
        )
        .bind(&orgs)
        .bind(&customers)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
        for (org, id, name, email) in found {
            lookups
                .customers
                .insert((org, id), Customer { name, email });
        }
        let found: Vec<(Uuid, Uuid, String, NaiveDate, Option<String>)> = sqlx::query_as(
            "select i.organization_id, i.id, i.invoice_number, i.issue_date, i.description
               from invoices i join unnest($1::uuid[], $2::uuid[]) as k(org, id)
                 on i.organization_id = k.org and i.id = k.id",
        )
        .bind(&invoice_orgs)
        .bind(&invoices)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
        for (org, id, number, issue_date, description) in found {
            lookups.invoices.insert(
                (org, id),
                InvoiceFacts::found(number, issue_date, description),
            );
        }
        for (org, customer, invoice) in parties {
            lookups
                .organizations
                .entry(org)
                .or_insert_with(|| NO_ORGANIZATION_NAME.into());
            lookups
                .customers
                .entry((org, customer))
                .or_insert_with(Customer::absent);
            if let Some(invoice) = invoice {
                lookups
                    .invoices
                    .entry((org, invoice))
                    .or_insert_with(InvoiceFacts::absent);
            }
        }
        Ok(lookups)
    }

    pub(super) async fn organization_name(
        &mut self,
        conn: &mut PgConnection,
        org: Uuid,
    ) -> Result<String, sqlx::Error> {
        if let Some(name) = self.organizations.get(&org) {
            return Ok(name.clone());
        }
        let row: Option<(String,)> = sqlx::query_as("select name from organizations where id = $1")
            .bind(org)
            .fetch_optional(&mut *conn)
            .await?;
        let name = row.map_or_else(|| NO_ORGANIZATION_NAME.into(), |(n,)| n);
        self.organizations.insert(org, name.clone());
        Ok(name)
    }

    pub(super) async fn customer(
        &mut self,
        conn: &mut PgConnection,
        org: Uuid,
        id: Uuid,
    ) -> Result<Customer, sqlx::Error> {
        if let Some(customer) = self.customers.get(&(org, id)) {
            return Ok(customer.clone());
        }
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "select name, email from customers where id = $1 and organization_id = $2",
        )
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
        let customer = row.map_or_else(Customer::absent, |(name, email)| Customer { name, email });
        self.customers.insert((org, id), customer.clone());
        Ok(customer)
    }

    pub(super) async fn invoice(
        &mut self,
        conn: &mut PgConnection,
        org: Uuid,
        id: Uuid,
    ) -> Result<InvoiceFacts, sqlx::Error> {
        if let Some(invoice) = self.invoices.get(&(org, id)) {
            return Ok(invoice.clone());
        }
        let row: Option<(String, NaiveDate, Option<String>)> = sqlx::query_as(
            "select invoice_number, issue_date, description from invoices
              where id = $1 and organization_id = $2",
        )
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
        let invoice = row.map_or_else(InvoiceFacts::absent, |(number, issue_date, description)| {
            InvoiceFacts::found(number, issue_date, description)
        });
        self.invoices.insert((org, id), invoice.clone());
        Ok(invoice)
    }
}

/// An organization's name in an email when its row is not there.
const NO_ORGANIZATION_NAME: &str = "Your society";

#[derive(Clone)]
pub(super) struct Customer {
    pub(super) name: String,
    email: Option<String>,
}

impl Customer {
    fn absent() -> Self {
        Customer {
            name: "Resident".into(),
            email: None,
        }
    }

    pub(super) fn recipient(&self, id: Uuid) -> Recipient {
        match self.email.as_deref().map(str::trim) {
            Some(email) if !email.is_empty() => Recipient::Address(email.to_string()),
            _ => Recipient::Missing {
                party: format!("customer:{id}"),
                reason: "the customer has no email address".into(),
            },
        }
    }
}

#[derive(Clone)]
pub(super) struct InvoiceFacts {
    pub(super) number: Option<String>,
    pub(super) issue_date: Option<NaiveDate>,
    pub(super) description: Option<String>,
}

impl InvoiceFacts {
    fn found(number: String, issue_date: NaiveDate, description: Option<String>) -> Self {
        InvoiceFacts {
            number: Some(number),
            issue_date: Some(issue_date),
            description,
        }
    }

    fn absent() -> Self {
        InvoiceFacts {
            number: None,
            issue_date: None,
            description: None,
        }
    }
}

pub(super) struct Order {
    pub(super) vendor_name: String,
    pub(super) requester_id: Option<Uuid>,
}

pub(super) async fn purchase_order(
    conn: &mut PgConnection,
    org: Uuid,
    id: Uuid,
) -> Result<Order, sqlx::Error> {
    let row: Option<(String, Uuid)> = sqlx::query_as(
        "select vendor_name, requester_id from purchase_orders
          where id = $1 and organization_id = $2",
    )
    .bind(id)
    .bind(org)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((vendor_name, requester_id)) => Order {
            vendor_name,
            requester_id: Some(requester_id),
        },
        None => Order {
            vendor_name: "a vendor".into(),
            requester_id: None,
        },
    })
}

pub(super) struct Person {
    pub(super) email: String,
    pub(super) name: String,
}

/// A user by id: the users projection first; the command side's `users` table when the
/// projection has not caught up yet (it is fed by another consumer group).
pub(super) async fn person(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> Result<Option<Person>, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as(
        "select email, name from (
             select email, name, 0 as preference from user_directory where user_id = $1
             union all
             select email, name, 1 from users where id = $1
         ) p order by preference limit 1",
    )
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(email, name)| Person { email, name }))
}
