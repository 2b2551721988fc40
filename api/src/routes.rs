//! Routes, one module per resource.

mod health;
mod jobs;
mod ledger;
mod payroll;
mod sales;

use axum::Router;
use axum::routing::{get, post};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/v1/customers", post(sales::create_customer))
        .route("/v1/customers/{id}/balance", get(ledger::customer_balance))
        .route(
            "/v1/customers/{id}/statement",
            get(ledger::customer_statement),
        )
        .route("/v1/invoices", post(sales::create_invoice))
        .route("/v1/invoices/{id}", get(sales::invoice))
        .route("/v1/invoices/{id}/void", post(sales::void_invoice))
        .route("/v1/payments/manual", post(sales::record_manual_payment))
        .route("/v1/salaries", post(payroll::post_salary))
        .route("/v1/salaries/{id}", get(payroll::salary))
        .route("/v1/accounts/{code}/balance", get(ledger::account_balance))
        .route("/v1/trial-balance", get(ledger::trial_balance))
        .route("/v1/ledger/entries", get(ledger::entries))
        .route("/v1/jobs/runs", get(jobs::runs))
        .fallback(health::not_found)
}
