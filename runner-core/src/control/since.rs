//! The `since` of a `logs` request: an RFC 3339 timestamp or a look-back
//! duration, resolved to milliseconds since the Unix epoch.

use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A `since` value that is neither a timestamp nor a duration.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "since {value:?} is neither an RFC 3339 timestamp (2026-11-30T07:40:00Z) nor a duration (30s, 15m, 1h, 2d, 1h30m)"
)]
pub struct SinceError {
    /// The value as sent.
    pub value: String,
}

/// Resolves `since` against `now_ms` (ms since the Unix epoch): a timestamp
/// is taken as is (clamped at the epoch), a duration counts back from now.
pub fn since_ms(since: &str, now_ms: u64) -> Result<u64, SinceError> {
    let err = || SinceError {
        value: since.to_owned(),
    };
    let trimmed = since.trim();
    if let Some(ago) = parse_duration(trimmed) {
        return Ok(now_ms.saturating_sub(ago.as_millis().try_into().unwrap_or(u64::MAX)));
    }
    let at = OffsetDateTime::parse(trimmed, &Rfc3339).map_err(|_| err())?;
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    Ok(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

/// `30s`, `15m`, `1h`, `2d`, `500ms`, or a sum of those (`1h30m`).
fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        rest = &rest[unit..];
    }
    Some(total)
}

/// `unix_ms` as an RFC 3339 UTC timestamp with milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn durations_count_back_from_now() {
        assert_eq!(since_ms("30s", NOW), Ok(NOW - 30_000));
        assert_eq!(since_ms("15m", NOW), Ok(NOW - 900_000));
        assert_eq!(since_ms("1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(since_ms("2d", NOW), Ok(NOW - 172_800_000));
        assert_eq!(since_ms("1h30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(since_ms("250ms", NOW), Ok(NOW - 250));
        assert_eq!(since_ms("100000d", 5), Ok(0));
    }

    #[test]
    fn timestamps_with_any_offset() {
        let utc = since_ms("2026-11-30T07:40:00Z", NOW).unwrap();
        let plus2 = since_ms("2026-11-30T09:40:00+02:00", NOW).unwrap();
        let frac = since_ms("2026-11-30T07:40:00.250Z", NOW).unwrap();
        assert_eq!(utc, plus2);
        assert_eq!(frac, utc + 250);
        assert_eq!(utc, 1_796_024_400_000);
        assert_eq!(since_ms("1960-01-01T00:00:00Z", NOW), Ok(0));
    }

    #[test]
    fn garbage_is_refused_with_the_value() {
        for bad in [
            "",
            "m",
            "5y",
            "15 m",
            "-5m",
            "yesterday",
            "2026-11-30",
            "1700000000000",
        ] {
            let e = since_ms(bad, NOW).unwrap_err();
            assert_eq!(e.value, bad);
        }
    }

    #[test]
    fn formats_rfc3339_with_millis() {
        assert_eq!(rfc3339_ms(1_796_024_400_250), "2026-11-30T07:40:00.25Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
    }
}
