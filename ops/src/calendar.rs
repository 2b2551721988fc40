//! The dates of the invoices the demo, the benchmarks and the load campaign issue: issued
//! today (UTC) and due [`DUE_IN_DAYS`] days later, so that on whatever day they run no
//! payment reminder (sent `DHANMAN_REMINDER_DAYS_BEFORE` days before the due date, three by
//! default) falls due while they run, and none is refused for a due date before its issue.

use chrono::{Days, NaiveDate, Utc};

/// How long after its issue an invoice of the demo or a benchmark falls due.
pub const DUE_IN_DAYS: u64 = 20;

/// An invoice's dates, read off the clock once (so they agree across midnight).
#[derive(Debug, Clone)]
pub struct Dates {
    /// Today, in UTC.
    pub issue: NaiveDate,
    /// [`DUE_IN_DAYS`] days after the issue.
    pub due: NaiveDate,
    /// The month of the issue as an invoice's `period` (`YYYY-MM`).
    pub period: String,
}

impl Dates {
    pub fn today() -> Dates {
        let issue = Utc::now().date_naive();
        Dates {
            issue,
            due: issue + Days::new(DUE_IN_DAYS),
            period: issue.format("%Y-%m").to_string(),
        }
    }
}

/// The due date of an invoice issued today.
pub fn due_date() -> NaiveDate {
    Dates::today().due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invoice_falls_due_after_its_issue_in_the_month_it_names() {
        let dates = Dates::today();
        assert_eq!((dates.due - dates.issue).num_days(), DUE_IN_DAYS as i64);
        assert_eq!(dates.period, format!("{}", dates.issue.format("%Y-%m")));
        assert_eq!(dates.period.len(), 7);
    }

    #[test]
    fn no_reminder_of_such_an_invoice_falls_due_today_or_tomorrow() {
        use dhanman_processors::reminders::{DEFAULT_DAYS_BEFORE, fire_at};
        let dates = Dates::today();
        let fires = fire_at(dates.due, DEFAULT_DAYS_BEFORE);
        assert!(fires.date_naive() > dates.issue + Days::new(1), "{fires}");
    }
}
