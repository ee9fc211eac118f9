//! A calendar month in UTC, the billing period: `YYYY-MM`, its bounds and its neighbours.

use std::fmt;

use crate::ids::EpochSeconds;

/// One UTC calendar month (`YYYY-MM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: i32,
    /// 1..=12.
    month: u32,
}

/// A text that is not a `YYYY-MM` month.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a YYYY-MM period")]
pub struct BadMonth(pub String);

impl Month {
    /// `YYYY-MM`: four digits, a dash, two digits, month 01 to 12.
    pub fn parse(text: &str) -> Result<Month, BadMonth> {
        let bad = || BadMonth(text.to_string());
        let b = text.as_bytes();
        if b.len() != 7 || b[4] != b'-' || !b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month): (i32, u32) = (text[..4].parse().map_err(|_| bad())?, text[5..].parse().map_err(|_| bad())?);
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn year(self) -> i32 {
        self.year
    }

    /// 1..=12.
    pub fn number(self) -> u32 {
        self.month
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month { year: self.year + 1, month: 1 }
        } else {
            Month { year: self.year, month: self.month + 1 }
        }
    }

    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month { year: self.year - 1, month: 12 }
        } else {
            Month { year: self.year, month: self.month - 1 }
        }
    }

    /// The first day.
    pub fn first_day(self) -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("a parsed month has a first day")
    }

    /// `[start, end)` in epoch seconds.
    pub fn range(self) -> (EpochSeconds, EpochSeconds) {
        let at = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp();
        (at(self.first_day()), at(self.next().first_day()))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly_and_step_across_years() {
        let m = Month::parse("2025-12").unwrap();
        assert_eq!(
            (m.year(), m.number(), m.next().to_string(), m.previous().to_string()),
            (2025, 12, "2026-01".into(), "2025-11".into())
        );
        assert_eq!(Month::parse("2026-01").unwrap().previous().to_string(), "2025-12");
        assert_eq!(Month::parse("2025-11").unwrap().range(), (1_761_955_200, 1_764_547_200));
        for bad in ["2025-13", "2025-00", "2025-1", "+202-01", "2025/01", "", "2025-011"] {
            assert_eq!(Month::parse(bad), Err(BadMonth(bad.into())), "{bad}");
        }
        assert_eq!(BadMonth("x".into()).to_string(), "\"x\" is not a YYYY-MM period");
    }
}
