//! The accounts the posting rules post to: the defaults of the table in [`super`], any of
//! which but the receivable a deployment may move (`DHANMAN_LEDGER_ACCOUNTS`, e.g.
//! `revenue=4100`). Entries posted before a change keep their accounts; `dhanman replay
//! --processor ledger --correct` reverses and re-posts them under the new rules.

use std::str::FromStr;
use std::sync::LazyLock;

use sqlx::PgConnection;

use super::{AR, BANK, COMMITMENTS, EXPENSES, PAYABLE, RESERVED_BUDGET, REVENUE};
use super::{SALARIES_PAYABLE, SALARY_EXPENSE};

/// Where each rule posts. The receivable is fixed (1200): the auditor reconciles it with
/// the command side's invoices and payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub bank: String,
    pub revenue: String,
    pub salaries_payable: String,
    pub salary_expense: String,
    pub expenses: String,
    pub payable: String,
    pub reserved_budget: String,
    pub commitments: String,
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts {
            bank: BANK.into(),
            revenue: REVENUE.into(),
            salaries_payable: SALARIES_PAYABLE.into(),
            salary_expense: SALARY_EXPENSE.into(),
            expenses: EXPENSES.into(),
            payable: PAYABLE.into(),
            reserved_budget: RESERVED_BUDGET.into(),
            commitments: COMMITMENTS.into(),
        }
    }
}

/// The rules as shipped.
pub static DEFAULT: LazyLock<Accounts> = LazyLock::new(Accounts::default);

/// The names `DHANMAN_LEDGER_ACCOUNTS` takes.
pub const KEYS: [&str; 8] = [
    "bank",
    "revenue",
    "salaries_payable",
    "salary_expense",
    "expenses",
    "payable",
    "reserved_budget",
    "commitments",
];

impl Accounts {
    fn slot(&mut self, key: &str) -> Option<&mut String> {
        Some(match key {
            "bank" => &mut self.bank,
            "revenue" => &mut self.revenue,
            "salaries_payable" => &mut self.salaries_payable,
            "salary_expense" => &mut self.salary_expense,
            "expenses" => &mut self.expenses,
            "payable" => &mut self.payable,
            "reserved_budget" => &mut self.reserved_budget,
            "commitments" => &mut self.commitments,
            _ => return None,
        })
    }

    /// Every code the rules name, the receivable's included.
    pub fn codes(&self) -> Vec<&str> {
        vec![
            AR,
            &self.bank,
            &self.revenue,
            &self.salaries_payable,
            &self.salary_expense,
            &self.expenses,
            &self.payable,
            &self.reserved_budget,
            &self.commitments,
        ]
    }

    /// Refuses rules that name an account the chart (`accounts`) lacks: found at start,
    /// not by the first batch (which the database would refuse).
    pub async fn verify(&self, conn: &mut PgConnection) -> Result<(), String> {
        let codes: Vec<String> = self.codes().into_iter().map(str::to_string).collect();
        let missing: Vec<(String,)> = sqlx::query_as(
            "select c from unnest($1::text[]) as c
              where not exists (select 1 from accounts a where a.code = c)",
        )
        .bind(&codes)
        .fetch_all(conn)
        .await
        .map_err(|e| format!("reading the chart of accounts: {e}"))?;
        if missing.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = missing.into_iter().map(|(c,)| c).collect();
        Err(format!(
            "the posting rules name accounts the chart lacks: {}",
            missing.join(", ")
        ))
    }
}

impl FromStr for Accounts {
    type Err = String;

    /// `key=code` pairs separated by commas; keys not named keep their default.
    fn from_str(raw: &str) -> Result<Self, String> {
        let mut accounts = Accounts::default();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, code) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected key=code"))?;
            let (key, code) = (key.trim(), code.trim());
            if key == "receivable" {
                return Err(format!(
                    "the receivable stays {AR}: the auditor reconciles it with the command side"
                ));
            }
            let valid = !code.is_empty()
                && code.len() <= 16
                && code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !valid {
                return Err(format!(
                    "{key}={code:?}: an account code is 1 to 16 letters, digits, '.' or '-'"
                ));
            }
            let slot = accounts.slot(key).ok_or_else(|| {
                format!("{key:?}: not a rule's account; one of {}", KEYS.join(", "))
            })?;
            *slot = code.to_string();
        }
        Ok(accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_bad_ones_are_named() {
        let a: Accounts = "revenue=4100, bank = 1010".parse().unwrap();
        assert_eq!((a.revenue.as_str(), a.bank.as_str()), ("4100", "1010"));
        assert_eq!(a.payable, PAYABLE);
        assert_eq!("".parse::<Accounts>().unwrap(), Accounts::default());
        for (bad, says) in [
            ("revenue", "expected key=code"),
            ("income=4100", "not a rule's account"),
            ("receivable=1210", "the receivable stays 1200"),
            ("revenue=", "1 to 16"),
            ("revenue=41 00", "1 to 16"),
            ("revenue=12345678901234567", "1 to 16"),
        ] {
            let err = bad.parse::<Accounts>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
