//! The dates of the invoices the demo, the benchmarks and the load campaign issue: issued
//! today (UTC) and due [`DUE_IN_DAYS`] days later, so that on whatever day they run no
//! payment reminder (sent `DHANMAN_REMINDER_DAYS_BEFORE` days before the due date, three by
//! default) falls due while they run, and none is refused for a due date before its issue.

use chrono::{Days, NaiveDate, Utc};

/// How long after its issue an invoice of the demo or a benchmark falls due.
pub const DUE_IN_DAYS: u64 = 20;

/// Today, in UTC: the invoices' issue date.
pub fn issue_date() -> NaiveDate {
    Utc::now().date_naive()
}

/// [`DUE_IN_DAYS`] days after [`issue_date`].
pub fn due_date() -> NaiveDate {
    issue_date() + Days::new(DUE_IN_DAYS)
}

/// The month of [`issue_date`] as an invoice's `period` (`YYYY-MM`).
pub fn period() -> String {
    issue_date().format("%Y-%m").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invoice_falls_due_after_its_issue_in_the_month_it_names() {
        let (issue, due) = (issue_date(), due_date());
        assert_eq!((due - issue).num_days(), DUE_IN_DAYS as i64);
        assert_eq!(period(), format!("{}", issue.format("%Y-%m")));
        assert_eq!(period().len(), 7);
    }

    #[test]
    fn no_reminder_of_such_an_invoice_falls_due_today_or_tomorrow() {
        use dhanman_processors::reminders::{DEFAULT_DAYS_BEFORE, fire_at};
        let tomorrow = issue_date() + Days::new(1);
        let fires = fire_at(due_date(), DEFAULT_DAYS_BEFORE);
        assert!(fires.date_naive() > tomorrow, "{fires}");
    }
}
