//! Monthly reports per customer: time spent and billable time per account and issue, as the invoice is built
//! (Tempo's customer report: billable and non-billable hours side by side).

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::db::ReportLine;
use crate::Error;

/// A customer's month.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthlyReport {
    pub customer: String,
    pub customer_name: String,
    pub month: String,
    pub lines: Vec<ReportLine>,
    pub accounts: Vec<AccountTotal>,
    pub total: Totals,
}

/// Hours, in seconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub time_spent_seconds: i64,
    pub billable_seconds: i64,
    pub non_billable_seconds: i64,
}

impl Totals {
    fn add(&mut self, l: &ReportLine) {
        self.time_spent_seconds += l.time_spent_seconds;
        self.billable_seconds += l.billable_seconds;
        self.non_billable_seconds += l.time_spent_seconds - l.billable_seconds;
    }
}

/// One account's sums.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountTotal {
    pub account: String,
    pub account_name: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The first day of `YYYY-MM` and of the month after it.
pub fn month_range(month: &str) -> Result<(NaiveDate, NaiveDate), Error> {
    let bad = || Error::BadRequest(format!("month {month:?}: write it as YYYY-MM, e.g. 2026-11"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    let from = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
    let to = if m == 12 { NaiveDate::from_ymd_opt(y + 1, 1, 1) } else { NaiveDate::from_ymd_opt(y, m + 1, 1) }
        .ok_or_else(bad)?;
    Ok((from, to))
}

/// The current month as `YYYY-MM`.
pub fn this_month() -> String {
    let d = chrono::Utc::now().date_naive();
    format!("{:04}-{:02}", d.year(), d.month())
}

/// Sums lines into account totals and a grand total.
pub fn build(customer: &str, customer_name: &str, month: &str, lines: Vec<ReportLine>) -> MonthlyReport {
    let mut accounts: Vec<AccountTotal> = Vec::new();
    let mut total = Totals::default();
    for l in &lines {
        total.add(l);
        match accounts.iter_mut().find(|a| a.account == l.account) {
            Some(a) => a.totals.add(l),
            None => {
                let mut t = Totals::default();
                t.add(l);
                accounts.push(AccountTotal {
                    account: l.account.clone(),
                    account_name: l.account_name.clone(),
                    totals: t,
                });
            }
        }
    }
    MonthlyReport {
        customer: customer.into(),
        customer_name: customer_name.into(),
        month: month.into(),
        lines,
        accounts,
        total,
    }
}

/// Seconds as hours with two decimals.
pub fn hours(seconds: i64) -> String {
    format!("{:.2}", seconds as f64 / 3600.0)
}

/// The report as CSV, one line per account and issue, hours with two decimals.
pub fn csv(r: &MonthlyReport) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from("customer,month,account,issue,title,hours,billable_hours,non_billable_hours\n");
    for l in &r.lines {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            field(&r.customer),
            r.month,
            field(&l.account),
            l.issue_id,
            field(&l.issue_title),
            hours(l.time_spent_seconds),
            hours(l.billable_seconds),
            hours(l.time_spent_seconds - l.billable_seconds)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(account: &str, issue: i64, spent_h: i64, billable_h: i64) -> ReportLine {
        ReportLine {
            account: account.into(),
            account_name: format!("{account} name"),
            issue_id: issue,
            issue_title: format!("issue, \"{issue}\""),
            time_spent_seconds: spent_h * 3600,
            billable_seconds: billable_h * 3600,
        }
    }

    #[test]
    fn months_are_half_open_and_december_rolls_over() {
        let (a, b) = month_range("2026-12").expect("valid");
        assert_eq!((a.to_string(), b.to_string()), ("2026-12-01".into(), "2027-01-01".into()));
        let (a, b) = month_range("2026-02").expect("valid");
        assert_eq!((a.to_string(), b.to_string()), ("2026-02-01".into(), "2026-03-01".into()));
        for bad in ["2026", "2026-13", "x-01", "2026-00"] {
            assert!(month_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn totals_split_billable_and_non_billable_per_account() {
        // Taylor's day from the Tempo post: 8 h spent, 7 h billable; plus 3 h of training, never billable.
        let r = build(
            "SOY",
            "Soylent Corp",
            "2026-04",
            vec![line("SOYBIL", 1, 8, 7), line("SOYBIL", 2, 2, 2), line("SOYTRN", 1, 3, 0)],
        );
        assert_eq!(
            r.total,
            Totals { time_spent_seconds: 13 * 3600, billable_seconds: 9 * 3600, non_billable_seconds: 4 * 3600 }
        );
        assert_eq!(r.accounts.len(), 2);
        assert_eq!(r.accounts[0].totals.billable_seconds, 9 * 3600);
        assert_eq!(r.accounts[1].totals.non_billable_seconds, 3 * 3600);
        let csv = csv(&r);
        assert!(csv.contains("SOY,2026-04,SOYBIL,1,\"issue, \"\"1\"\"\",8.00,7.00,1.00\n"), "{csv}");
        assert_eq!(csv.lines().count(), 4);
    }
}
