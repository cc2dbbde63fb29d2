//! Parsing of the settings that transports and braid share (sizes such as
//! `4M`, `BRAID_SPIN_US`), so that every variable accepts the same forms.

use std::time::Duration;

/// Parses a byte count: `4194304`, `4M`, `4MiB`, `4mb`, `512K`, `1G` (binary
/// multiples). `None` when it is not one or overflows.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return None;
    }
    let number: u64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1u64.checked_shl(shift)?)
}

/// [`parse_size`] as a `usize` (`None` where it does not fit).
pub(crate) fn parse_size_usize(text: &str) -> Option<usize> {
    parse_size(text).and_then(|b| usize::try_from(b).ok())
}

/// The value of `BRAID_SPIN_US`: whole microseconds, 0 to 10 000 000. The
/// error names the variable, its value and what was expected.
pub fn parse_spin_us(value: &str) -> Result<Duration, String> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|us| *us <= 10_000_000)
        .map(Duration::from_micros)
        .ok_or_else(|| {
            format!(
                "BRAID_SPIN_US='{value}': expected microseconds, a whole number from 0 to 10000000"
            )
        })
}
