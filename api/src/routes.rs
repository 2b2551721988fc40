//! Routes, one module per resource.

mod dashboard;
mod health;
mod jobs;
mod lag;
mod ledger;
mod notifications;
mod payments;
mod payroll;
mod purchase;
mod reminders;
mod sales;
mod users;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/openapi.json", get(crate::openapi::document))
        .route("/v1/customers", post(sales::create_customer))
        .route("/v1/customers/{id}/balance", get(ledger::customer_balance))
        .route(
            "/v1/customers/{id}/statement",
            get(ledger::customer_statement),
        )
        .route("/v1/invoices", post(sales::create_invoice))
        .route(
            "/v1/invoices/batch",
            post(sales::create_invoice_batch).layer(axum::extract::DefaultBodyLimit::max(
                sales::MAX_BATCH_BODY_BYTES,
            )),
        )
        .route("/v1/invoices/{id}", get(sales::invoice))
        .route("/v1/invoices/{id}/void", post(sales::void_invoice))
        .route("/v1/invoices/{id}/email", post(sales::email_invoice))
        .route("/v1/payments/manual", post(sales::record_manual_payment))
        .route("/v1/payments", post(payments::create_payment))
        .route("/v1/payments/{id}", get(payments::payment))
        .route("/v1/payments/{id}/receipt", post(sales::email_receipt))
        .route("/metrics", get(crate::prometheus::render))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/dashboard.js", get(dashboard::script))
        .route("/dashboard/uplot.js", get(dashboard::uplot_js))
        .route("/dashboard/uplot.css", get(dashboard::uplot_css))
        .route("/v1/salaries", post(payroll::post_salary))
        .route("/v1/salaries/{id}", get(payroll::salary))
        .route("/v1/accounts/{code}/balance", get(ledger::account_balance))
        .route("/v1/trial-balance", get(ledger::trial_balance))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/jobs/runs", get(jobs::runs))
        .route("/v1/lag", get(lag::lag))
        .route("/v1/notifications", get(notifications::list))
        .route("/v1/reminders", get(reminders::reminder))
        .route("/v1/users", post(users::create_user).get(users::directory))
        .route("/v1/users/{id}", get(users::user))
        .route("/v1/invitations/accept", post(users::accept_invitation))
        .route("/v1/keys", get(users::keys))
        .route("/v1/keys/{id}/revoke", post(users::revoke_key))
        .route("/v1/keys/{id}/rotate", post(users::rotate_key))
        .route("/v1/purchase-orders", post(purchase::submit_order))
        .route("/v1/purchase-orders/{id}", get(purchase::order))
        .route(
            "/v1/purchase-orders/{id}/approve",
            post(purchase::approve_order),
        )
        .route(
            "/v1/purchase-orders/{id}/reject",
            post(purchase::reject_order),
        )
        .route("/v1/bills", post(purchase::create_bill))
        .route("/v1/bills/{id}", get(purchase::bill))
        .fallback(health::not_found)
}
