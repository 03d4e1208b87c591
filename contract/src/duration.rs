//! Durations as the flags write them: `500ms`, `10s`, `5m`, `1h`, and `off`
//! for "no limit" where a flag allows it.

use std::time::Duration;

/// Parses durations such as `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a duration; write e.g. 500ms, 10s, 5m or 1h"))?;
    let too_long = || format!("{value:?} is too long");
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(format!("{value:?} has unit {unit:?}; use ms, s, m or h")),
    };
    Ok(d)
}

/// As [`parse_duration`], but `off` means no limit, returned as zero.
pub fn parse_optional_duration(value: &str) -> Result<Duration, String> {
    if value.trim().eq_ignore_ascii_case("off") {
        return Ok(Duration::ZERO);
    }
    parse_duration(value).map_err(|e| format!("{e}, or off"))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly.
pub fn render_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Writes an optional limit: `off` for none.
pub fn render_optional_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_owned(), render_duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert_eq!(parse_optional_duration("off"), Ok(Duration::ZERO));
        assert_eq!(parse_optional_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_optional_duration("never").is_err());
        for d in [Duration::from_millis(1500), Duration::from_secs(300)] {
            assert_eq!(parse_duration(&render_duration(d)), Ok(d));
        }
        assert_eq!(render_optional_duration(None), "off");
    }
}
