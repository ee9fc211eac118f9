//! Money in reconcile: `rust_decimal::Decimal` in Rust, `Decimal128(38, 10)` in Arrow, and the
//! one place where a CUR number becomes money.
//!
//! Why 10 decimal places: allocation splits cost in integer units of 10⁻¹⁰ USD (SPEC §3), and
//! AWS states CUR rates and costs to at most 10 places (`line_item_unblended_rate` is text like
//! `"0.0080000000"`). Every money column tally writes is `Decimal128(38, 10)`: the integer is
//! the number of units, so sums over Arrow arrays are exact `i128` additions.
//!
//! How a CUR number is read (`to_units_*`):
//! - a `double` (what AWS and pandas write for costs and amounts) is the nearest double to a
//!   decimal with at most 10 places, so it is read back as that decimal: below 10⁴ by scaling
//!   with 10¹⁰ and rounding to the nearest integer (the scaling error is under 0.05 of a unit,
//!   so the rounding lands on the decimal exactly); at or above 10⁴ through its shortest
//!   round-trip text (Rust's `Display`), parsed as a decimal. A double with more than 10
//!   significant places is rounded to 10 (half to even on the text path);
//! - a `decimal(p, s)` column is rescaled exactly, rounding half to even when `s > 10`;
//! - decimal text is parsed exactly, then rounded the same way.
//!
//! Estimated costs (tokens × list price) can have more places than 10 (a Nova Micro cache-read
//! token costs 0.00000000875); they are summed exactly as `Decimal` and rounded to 10 places
//! only when written.

use std::str::FromStr;

use datafusion::arrow::datatypes::DataType;
use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places of every money column.
pub const SCALE: u32 = 10;

/// The Arrow type of every money column.
pub fn arrow_type() -> DataType {
    DataType::Decimal128(38, SCALE as i8)
}

/// A decimal as a count of 10⁻¹⁰ USD units (rounded half to even past 10 places).
pub fn to_units(d: Decimal) -> i128 {
    let mut r = d.round_dp_with_strategy(SCALE, RoundingStrategy::MidpointNearestEven);
    r.rescale(SCALE);
    r.mantissa()
}

/// A count of units as a decimal with 10 places.
pub fn from_units(units: i128) -> Decimal {
    Decimal::from_i128_with_scale(units, SCALE)
}

/// A CUR double as units; `None` for NaN and infinities.
pub fn to_units_f64(v: f64) -> Option<i128> {
    if !v.is_finite() {
        return None;
    }
    if v.abs() < 1e4 {
        // |v · 10¹⁰| < 10¹⁴: exact in an i64, and a hardware conversion (an i128 one is not).
        return Some((v * 1e10).round() as i64 as i128);
    }
    Decimal::from_str(&format!("{v}")).ok().map(to_units)
}

/// A CUR `decimal(_, scale)` value (its unscaled integer) as units.
pub fn to_units_decimal(unscaled: i128, scale: i8) -> Option<i128> {
    let s = i32::from(scale);
    let target = SCALE as i32;
    if s == target {
        Some(unscaled)
    } else if s < target {
        unscaled.checked_mul(10i128.checked_pow((target - s) as u32)?)
    } else {
        let div = 10i128.checked_pow((s - target) as u32)?;
        let (q, r) = (unscaled / div, unscaled % div);
        let twice = r.abs() * 2;
        let away = twice > div || (twice == div && q % 2 != 0);
        Some(if away { q + unscaled.signum() } else { q })
    }
}

/// Decimal text (`"0.0080000000"`) as units.
pub fn to_units_text(s: &str) -> Option<i128> {
    let t = s.trim();
    Decimal::from_str(t).or_else(|_| Decimal::from_scientific(t)).ok().map(to_units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn doubles_read_back_as_the_decimal_that_was_written() {
        for text in
            ["0.093944", "0.0000474", "0.0000012", "5.5", "0.0000000001", "9999.9999999999", "123456.789", "-0.25"]
        {
            let v: f64 = text.parse().unwrap();
            assert_eq!(from_units(to_units_f64(v).unwrap()), dec(text), "{text}");
        }
        // More than 10 places: rounded.
        assert_eq!(from_units(to_units_f64(0.000000000049).unwrap()), Decimal::ZERO);
        assert_eq!(to_units_f64(f64::NAN), None);
    }

    #[test]
    fn decimals_and_text_rescale_exactly() {
        assert_eq!(to_units_decimal(939_440, 7), Some(939_440_000));
        assert_eq!(to_units_decimal(15, 11), Some(2)); // 1.5 units → 2 (half to even)
        assert_eq!(to_units_decimal(25, 11), Some(2)); // 2.5 units → 2
        assert_eq!(to_units_decimal(-35, 11), Some(-4));
        assert_eq!(to_units_text("0.0080000000"), Some(80_000_000));
        assert_eq!(to_units(dec("0.00000000875")), 88);
    }
}
