//! Which CUR folders belong to a billing period: `BILLING_PERIOD=2025-11`, `year=` and
//! `month=` partitions (CUR 2.0 and Data Exports), and legacy report folders
//! (`20241101-20241201`). Used for local folders and S3 prefixes alike.

/// Whether a folder name is compatible with the period: not a partition, or the period's.
pub fn partition_matches(name: &str, year: i32, month: u32) -> bool {
    if let Some((key, value)) = name.split_once('=') {
        return match key.to_ascii_lowercase().as_str() {
            "billing_period" => value == format!("{year:04}-{month:02}"),
            "year" => value.parse::<i32>().ok() == Some(year),
            "month" => value.parse::<u32>().ok() == Some(month),
            _ => true,
        };
    }
    // Legacy CUR report folders: `20241101-20241201`.
    let b = name.as_bytes();
    if b.len() == 17 && b[8] == b'-' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit()) {
        return name[..6] == format!("{year:04}{month:02}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_folders_select_the_period() {
        assert!(partition_matches("BILLING_PERIOD=2025-11", 2025, 11));
        assert!(!partition_matches("BILLING_PERIOD=2025-10", 2025, 11));
        assert!(partition_matches("year=2024", 2024, 9) && partition_matches("month=9", 2024, 9));
        assert!(partition_matches("month=09", 2024, 9));
        assert!(!partition_matches("month=10", 2024, 9));
        assert!(partition_matches("20241101-20241201", 2024, 11));
        assert!(!partition_matches("20241001-20241101", 2024, 11));
        assert!(partition_matches("data", 2024, 11));
    }
}
