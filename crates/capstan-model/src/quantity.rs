//! Kubernetes-style resource quantities (`512Mi`, `1G`, `500m`) and durations (`30s`, `1h30m`).

use std::time::Duration;

/// Parses a memory quantity into bytes: a plain number, or one with a binary (`Ki`, `Mi`, `Gi`, `Ti`)
/// or decimal (`k`, `M`, `G`, `T`) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown suffix `{other}`; use Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"
            ))
        }
    };
    let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a quantity; write for example 512Mi or 1Gi"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("`{s}` must be a positive quantity"));
    }
    let bytes = value * mult as f64;
    if bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a CPU quantity into millicores: `1` is 1000, `0.5` is 500, `250m` is 250.
pub fn parse_millicpu(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, scale) = match s.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (s, 1000.0),
    };
    let value: f64 =
        num.parse().map_err(|_| format!("`{s}` is not a CPU quantity; write for example 1, 0.5 or 500m"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("`{s}` must be a positive CPU quantity"));
    }
    Ok((value * scale).round().max(1.0) as u64)
}

/// Parses a Go-style duration: `300ms`, `10s`, `5m`, `1h30m`, `2d`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; write for example 30s, 5m or 1h".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}` is missing a unit after the number (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!("`{s}` is not a duration; write for example 30s, 5m or 1h30m"));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let value: f64 = num.parse().map_err(|_| format!("`{num}` is not a number in `{s}`"))?;
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => return Err(format!("unknown unit `{other}` in `{s}`; use ms, s, m, h or d")),
        };
        // A number too large for a duration is an error, not a panic (the text may come from anyone).
        let part = Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is too long a duration"))?;
        total = total.checked_add(part).ok_or_else(|| format!("`{s}` is too long a duration"))?;
        rest = next;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12Qi").unwrap_err().contains("unknown suffix"));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn cpu() {
        assert_eq!(parse_millicpu("1").unwrap(), 1000);
        assert_eq!(parse_millicpu("0.5").unwrap(), 500);
        assert_eq!(parse_millicpu("250m").unwrap(), 250);
        assert!(parse_millicpu("0").is_err());
        assert!(parse_millicpu("fast").is_err());
    }

    #[test]
    fn a_duration_too_long_is_an_error_not_a_panic() {
        for huge in [format!("{}d", "9".repeat(400)), "18446744073709551615s18446744073709551615s".to_string()] {
            assert!(parse_duration(&huge).unwrap_err().contains("too long"), "{huge}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("").is_err());
    }
}
