//! Durations written `<integer><unit>` (DESIGN §3), held as microseconds.

use std::fmt;

const UNITS: [(&str, i64); 7] = [
    ("w", 7 * 86_400_000_000),
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
];

/// A non-negative span of time in microseconds.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Duration(i64);

impl Duration {
    /// The empty duration (a window without offset).
    pub const ZERO: Duration = Duration(0);

    /// Parse `<integer><unit>` with unit one of `us ms s m h d w` (a day is 86 400 s).
    pub fn parse(text: &str) -> Result<Duration, String> {
        let bad = || {
            format!(
                "bad duration {text:?}: expected <integer><unit> with unit one of us, ms, s, m, h, d, w (e.g. 30d, 1h, 500ms)"
            )
        };
        let s = text.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(bad());
        }
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(bad)?;
        let n: i64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(scale)
            .map(Duration)
            .ok_or_else(|| format!("duration {text:?} is too long"))
    }

    /// From microseconds; negative values are clamped to zero.
    pub fn from_micros(us: i64) -> Duration {
        Duration(us.max(0))
    }

    /// The duration in microseconds.
    pub fn micros(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Duration {
    /// The largest unit that divides the value exactly, so `30d` prints as `30d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return write!(f, "0s");
        }
        for (unit, scale) in UNITS {
            if self.0 % scale == 0 {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}us", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(Duration::parse("7us").unwrap().micros(), 7);
        assert_eq!(Duration::parse("7ms").unwrap().micros(), 7_000);
        assert_eq!(Duration::parse("7s").unwrap().micros(), 7_000_000);
        assert_eq!(Duration::parse("2m").unwrap().micros(), 120_000_000);
        assert_eq!(Duration::parse("1h").unwrap().micros(), 3_600_000_000);
        assert_eq!(Duration::parse("1d").unwrap().micros(), 86_400_000_000);
        assert_eq!(Duration::parse("2w").unwrap().micros(), 14 * 86_400_000_000);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "d", "30", "30x", "-1d", "1.5h", "30 d", "1D"] {
            let e = Duration::parse(bad).unwrap_err();
            assert!(
                e.contains("unit one of us, ms, s, m, h, d, w"),
                "{bad}: {e}"
            );
        }
        assert!(
            Duration::parse("99999999999999999w")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn displays_in_largest_exact_unit() {
        assert_eq!(Duration::parse("30d").unwrap().to_string(), "30d");
        assert_eq!(Duration::parse("14d").unwrap().to_string(), "2w");
        assert_eq!(Duration::parse("90m").unwrap().to_string(), "90m");
        assert_eq!(Duration::parse("1500ms").unwrap().to_string(), "1500ms");
    }
}
