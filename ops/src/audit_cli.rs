//! `dhanman audit`: the ledger auditor run once (see `dhanman_processors::audit`): a table
//! of violations (kind, organization, subject, detail) or, with `--json`, the report; a
//! summary line on stderr. Exit status 0 clean, 1 any violation, 2 when it could not audit
//! (Postgres unreachable, a query failed).

use std::process::ExitCode;
use std::time::Duration;

use dhanman_processors::audit::{self, AuditReport};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The report as JSON (`{"checked_at", "violations": [...]}`) instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connections: crate::Connections,
}

pub async fn run(args: Args) -> ExitCode {
    let pool = match connect(&args.connections).await {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("error: connecting to Postgres (DATABASE_URL): {e}");
            return ExitCode::from(2);
        }
    };
    let report = match audit::audit(&pool).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: auditing the ledger: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", table(&report));
    }
    eprintln!("{}", report.summary());
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A pool of one connection to the installation's database, after a first connection that
/// fails at once (with the reason) where the database cannot be reached. Its checks read
/// whole tables and take seconds on large books: sqlx's slow-statement warnings are off,
/// the summary line is what the command says.
async fn connect(connections: &crate::Connections) -> Result<sqlx::PgPool, sqlx::Error> {
    let options: PgConnectOptions = connections.database_url.expose_secret().parse()?;
    let options = options.disable_statement_logging();
    options.connect().await?.close().await?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// The violations as a terminal table; only the header when there are none.
pub fn table(report: &AuditReport) -> String {
    let mut out = format!(
        "{:<20} {:<36} {:<40} {}\n",
        "KIND", "ORGANIZATION", "SUBJECT", "DETAIL"
    );
    for v in &report.violations {
        let org = v
            .organization_id
            .map_or_else(|| "-".to_string(), |o| o.to_string());
        out.push_str(&format!(
            "{:<20} {:<36} {:<40} {}\n",
            v.kind, org, v.subject, v.detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhanman_processors::audit::Violation;

    #[test]
    fn the_table_has_a_row_per_violation() {
        let org = uuid::Uuid::now_v7();
        let report = AuditReport {
            checked_at: chrono::Utc::now(),
            violations: vec![Violation {
                kind: audit::BALANCE_MISMATCH,
                organization_id: Some(org),
                subject: "account_balances account 1000 INR".into(),
                detail:
                    "postings sum to debit 1.00, credit 0.00; the row has debit 2.00, credit 0.00"
                        .into(),
            }],
        };
        let table = table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("KIND"));
        assert!(lines[1].starts_with("balance_mismatch"));
        assert!(lines[1].contains(&org.to_string()));
        assert!(lines[1].ends_with("the row has debit 2.00, credit 0.00"));
    }
}
