//! Exact parsing of the numeric and time fields of event payloads.
//!
//! Amounts arrive as JSON numbers or JSON strings. Both are read from their *text* (serde_json's
//! `arbitrary_precision` keeps a number's text) and turned into digits and a power of ten here,
//! never through `f64`: `0.1` must be exactly one tenth, or sums drift from the publishers' sums.
//! Parsing the text ourselves (instead of `Decimal::from_str`) lets exponent forms (`1e3`,
//! `1.5E-2`, Python's `1e-05`) and absurd exponents (`1e400`, `1e-999999999999`) be judged
//! without overflow, allocation blow-up or panics, and gives one place where the
//! NUMERIC(15,4) bound is enforced.

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::{excerpt, DecodeError};

/// Decimal places of every NUMERIC(15,4) column the daemon writes.
pub(crate) const NUMERIC_SCALE: u32 = 4;

/// Digits before the point that NUMERIC(15,4) holds: every stored value has |v| < 10^11.
pub(crate) const NUMERIC_INT_DIGITS: i64 = 11;

/// Timestamps outside these years are taken for garbage (a zeroed or epoch-confused clock),
/// not for real trading times.
pub(crate) const MIN_YEAR: i32 = 1900;
/// See [`MIN_YEAR`].
pub(crate) const MAX_YEAR: i32 = 2999;

/// How a decimal field is made to fit NUMERIC(15,4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Rejected when it has more than 4 fractional digits (after dropping trailing zeros). Trade
    /// amounts are summed into aggregates that must equal the publishers' own sums to the last
    /// digit, so rounding one silently would be a ledger error.
    Exact,
    /// Rounded half away from zero to 4 places, which is what PostgreSQL does when storing into
    /// NUMERIC(15,4). For snapshots and prices (Yahoo sends floats like 187.44000244140625) that
    /// overwrite rather than accumulate, so rounding cannot drift anything.
    Round,
}

/// Exponents are clamped to this magnitude while being read: anything beyond it is already far
/// outside NUMERIC(15,4) (or far below its resolution), and the clamp keeps the arithmetic on
/// scales free of overflow for any message size.
const EXP_CLAMP: i64 = 1_000_000_000;

/// A number's text reduced to `± digits × 10^-scale`, with no leading or trailing zero digit.
/// Zero has no digits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digits {
    negative: bool,
    digits: Vec<u8>,
    scale: i64,
}

impl Digits {
    /// Accepts JSON number syntax, plus a leading `+` and leading zeros (harmless in strings that
    /// some publishers format themselves). Rejects everything else, including whitespace, `.5`,
    /// `5.`, `NaN`, `Infinity` and thousands separators.
    fn parse(text: &str) -> Option<Digits> {
        let b = text.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let int_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &b[int_start..i];
        if int_part.is_empty() {
            return None;
        }
        let mut frac_part: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &b[start..i];
            if frac_part.is_empty() {
                return None;
            }
        }
        let mut exp: i64 = 0;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                exp = (exp * 10 + i64::from(b[i] - b'0')).min(EXP_CLAMP);
                i += 1;
            }
            if i == start {
                return None;
            }
            if exp_negative {
                exp = -exp;
            }
        }
        if i != b.len() {
            return None;
        }
        let mut digits: Vec<u8> = int_part
            .iter()
            .chain(frac_part)
            .map(|c| c - b'0')
            .skip_while(|&d| d == 0)
            .collect();
        let mut scale = frac_part.len() as i64 - exp;
        while digits.last() == Some(&0) {
            digits.pop();
            scale -= 1;
        }
        if digits.is_empty() {
            scale = 0;
        }
        Some(Digits {
            negative: negative && !digits.is_empty(),
            digits,
            scale,
        })
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// Digits before the decimal point; `|v|` lies in `[10^(n-1), 10^n)`. Only for non-zero values.
    fn int_digits(&self) -> i64 {
        self.digits.len() as i64 - self.scale
    }

    fn fold(digits: &[u8]) -> i64 {
        digits.iter().fold(0i64, |acc, &d| acc * 10 + i64::from(d))
    }

    fn to_decimal(&self, fit: Fit) -> Result<Decimal, NumError> {
        if self.is_zero() {
            return Ok(Decimal::ZERO);
        }
        if self.int_digits() > NUMERIC_INT_DIGITS {
            return Err(NumError::TooLarge);
        }
        // Build v × 10^4 as an integer. int_digits ≤ 11 bounds it to 15 digits (16 after a
        // rounding carry), well inside i64.
        let shift = i64::from(NUMERIC_SCALE) - self.scale;
        let mantissa = if shift >= 0 {
            Self::fold(&self.digits) * 10i64.pow(shift as u32)
        } else {
            if fit == Fit::Exact {
                return Err(NumError::TooPrecise);
            }
            let keep = self.digits.len() as i64 + shift;
            if keep < 0 {
                0
            } else {
                // Half away from zero only needs the first dropped digit.
                let keep = keep as usize;
                Self::fold(&self.digits[..keep]) + i64::from(self.digits[keep] >= 5)
            }
        };
        if mantissa >= 10i64.pow(NUMERIC_INT_DIGITS as u32 + NUMERIC_SCALE) {
            return Err(NumError::TooLarge);
        }
        let signed = if self.negative { -mantissa } else { mantissa };
        Decimal::try_new(signed, NUMERIC_SCALE)
            .map(|d| d.normalize())
            .map_err(|_| NumError::TooLarge)
    }
}

enum NumError {
    TooLarge,
    TooPrecise,
}

fn json_number_text<'a>(
    field: &'static str,
    v: &'a Value,
    expected: &'static str,
) -> Result<&'a str, DecodeError> {
    match v {
        Value::Number(n) => Ok(n.as_str()),
        Value::String(s) => Ok(s),
        other => Err(DecodeError::bad_type(field, expected, other)),
    }
}

fn digits(field: &'static str, v: &Value, expected: &'static str) -> Result<Digits, DecodeError> {
    let text = json_number_text(field, v, expected)?;
    Digits::parse(text).ok_or_else(|| {
        let lower = text.to_ascii_lowercase();
        let reason = if text.is_empty() {
            "empty string is not a number".to_owned()
        } else if lower.contains("nan") || lower.contains("inf") {
            format!("{} is not a finite number", excerpt(text))
        } else {
            format!("{} is not a decimal number", excerpt(text))
        };
        DecodeError::bad_value(field, reason)
    })
}

/// A decimal that fits NUMERIC(15,4), made to fit as `fit` says.
pub(crate) fn decimal(field: &'static str, v: &Value, fit: Fit) -> Result<Decimal, DecodeError> {
    let text = json_number_text(field, v, "a decimal number or numeric string")?;
    let parsed = digits(field, v, "a decimal number or numeric string")?;
    parsed.to_decimal(fit).map_err(|e| match e {
        NumError::TooLarge => DecodeError::out_of_range(
            field,
            format!("{} does not fit NUMERIC(15,4) (|v| < 10^11)", excerpt(text)),
        ),
        NumError::TooPrecise => DecodeError::bad_value(
            field,
            format!(
                "{} would be rounded by NUMERIC(15,4); trade amounts must be exact",
                excerpt(text)
            ),
        ),
    })
}

/// Whether the value lies in NUMERIC(15,4)'s range; for values computed here rather than parsed.
pub(crate) fn fits_numeric(d: &Decimal) -> bool {
    d.abs() < Decimal::from(10i64.pow(NUMERIC_INT_DIGITS as u32))
}

pub(crate) fn require_positive(field: &'static str, d: Decimal) -> Result<Decimal, DecodeError> {
    if d > Decimal::ZERO {
        Ok(d)
    } else {
        Err(DecodeError::out_of_range(field, format!("{d} is not > 0")))
    }
}

pub(crate) fn require_non_negative(
    field: &'static str,
    d: Decimal,
) -> Result<Decimal, DecodeError> {
    if d >= Decimal::ZERO {
        Ok(d)
    } else {
        Err(DecodeError::out_of_range(field, format!("{d} is negative")))
    }
}

/// Reads a ratio in [0, 1] and answers whether it is ≥ 0.5. The value itself is never stored
/// (win rates are derived from integer counts), so it is judged on its exact digits, at any
/// precision: `0.49999999999999999999999999999999` is a loss, not a rounding to 0.5.
pub(crate) fn ratio_at_least_half(field: &'static str, v: &Value) -> Result<bool, DecodeError> {
    let text = json_number_text(field, v, "a number in [0, 1]")?;
    let d = digits(field, v, "a number in [0, 1]")?;
    let out = || DecodeError::out_of_range(field, format!("{} is not in [0, 1]", excerpt(text)));
    if d.is_zero() {
        return Ok(false);
    }
    if d.negative {
        return Err(out());
    }
    match d.int_digits() {
        n if n > 1 => Err(out()),
        1 if d.digits == [1] && d.scale == 0 => Ok(true),
        1 => Err(out()),
        0 => Ok(d.digits[0] >= 5),
        _ => Ok(false),
    }
}

/// A non-negative integer that fits `i64` (BIGINT). Integral floats (`1234.0`, `1.234e3`, as
/// pandas and Python float arithmetic produce) and integer strings count as integers.
pub(crate) fn non_negative_i64(field: &'static str, v: &Value) -> Result<i64, DecodeError> {
    let text = json_number_text(field, v, "an integer or integer string")?;
    let d = digits(field, v, "an integer or integer string")?;
    if d.is_zero() {
        return Ok(0);
    }
    if d.scale > 0 {
        return Err(DecodeError::bad_value(
            field,
            format!("{} is not an integer", excerpt(text)),
        ));
    }
    if d.negative {
        return Err(DecodeError::out_of_range(
            field,
            format!("{} is negative", excerpt(text)),
        ));
    }
    let too_large =
        || DecodeError::out_of_range(field, format!("{} does not fit BIGINT", excerpt(text)));
    if d.int_digits() > 19 {
        return Err(too_large());
    }
    let mut acc: i64 = 0;
    for &digit in d
        .digits
        .iter()
        .chain(std::iter::repeat_n(&0, (-d.scale) as usize))
    {
        acc = acc
            .checked_mul(10)
            .and_then(|a| a.checked_add(i64::from(digit)))
            .ok_or_else(too_large)?;
    }
    Ok(acc)
}

/// Reads a timestamp:
///
/// - RFC 3339 with an offset (`Z`, `+00:00`, `-05:00`; `T` or a space between date and time);
/// - the same without an offset (`2025-11-24T15:04:05.123456`, what the publishers'
///   `datetime.utcnow().isoformat()` writes), read as UTC;
/// - with `allow_date`, a bare `YYYY-MM-DD` as midnight UTC. Only bar timestamps allow it: a trade
///   or position time at midnight UTC would land on the previous exchange day in New York.
///
/// The result is truncated to microseconds, the resolution PostgreSQL stores (and what
/// tokio-postgres sends), so that times compared in Rust agree with stored ones. Truncation, unlike
/// rounding, never moves an instant across a day boundary. Leap seconds (`:60`) are refused:
/// PostgreSQL has none.
pub(crate) fn timestamp(
    field: &'static str,
    v: &Value,
    allow_date: bool,
) -> Result<DateTime<Utc>, DecodeError> {
    let s = match v {
        Value::String(s) => s.as_str(),
        other => {
            return Err(DecodeError::bad_type(
                field,
                "an ISO 8601 timestamp string",
                other,
            ))
        }
    };
    let dt = parse_timestamp(s, allow_date).ok_or_else(|| {
        DecodeError::bad_value(
            field,
            format!(
                "{} is not an ISO 8601 / RFC 3339 timestamp{}",
                excerpt(s),
                if allow_date { " or date" } else { "" }
            ),
        )
    })?;
    if dt.nanosecond() >= 1_000_000_000 {
        return Err(DecodeError::bad_value(
            field,
            format!("{} is a leap second", excerpt(s)),
        ));
    }
    if !(MIN_YEAR..=MAX_YEAR).contains(&dt.year()) {
        return Err(DecodeError::out_of_range(
            field,
            format!(
                "{} is outside the years {MIN_YEAR}..={MAX_YEAR}",
                excerpt(s)
            ),
        ));
    }
    Ok(dt
        .with_nanosecond(dt.nanosecond() / 1_000 * 1_000)
        .unwrap_or(dt))
}

fn parse_timestamp(s: &str, allow_date: bool) -> Option<DateTime<Utc>> {
    // chrono's RFC 3339 parser is strict about the date/time layout yet takes `T` or a space and
    // any number of fractional digits; an offset-less text is given a `Z` so the same parser
    // reads it. A text that already had an offset cannot parse with a second one appended.
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(&format!("{s}Z")) {
        return Some(dt.with_timezone(&Utc));
    }
    if allow_date && s.len() == 10 {
        if let Ok(dt) = DateTime::parse_from_rfc3339(&format!("{s}T00:00:00Z")) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn num(text: &str) -> Value {
        Value::Number(serde_json::Number::from_str(text).unwrap())
    }

    fn exact(v: &Value) -> Result<Decimal, DecodeError> {
        decimal("data.price", v, Fit::Exact)
    }

    fn round(v: &Value) -> Result<Decimal, DecodeError> {
        decimal("data.close", v, Fit::Round)
    }

    #[test]
    fn number_text_is_kept_exactly() {
        // arbitrary_precision must keep the text; f64 would turn these into approximations.
        assert_eq!(num("0.1").as_number().unwrap().as_str(), "0.1");
        assert_eq!(num("1e-05").as_number().unwrap().as_str(), "1e-05");
        assert_eq!(exact(&num("0.1")).unwrap(), dec("0.1"));
        assert_eq!(exact(&num("101.25")).unwrap(), dec("101.25"));
        assert_eq!(exact(&num("-7")).unwrap(), dec("-7"));
        assert_eq!(
            exact(&num("99999999999.9999")).unwrap(),
            dec("99999999999.9999")
        );
    }

    #[test]
    fn tenths_sum_exactly() {
        let a = exact(&num("0.1")).unwrap();
        let b = exact(&Value::String("0.2".into())).unwrap();
        assert_eq!(a + b, dec("0.3"));
        // f64 would give 0.30000000000000004.
        assert_ne!(0.1f64 + 0.2f64, 0.3f64);
    }

    #[test]
    fn strings_and_numbers_agree() {
        for t in [
            "101.25", "0", "-0", "1e3", "1.5E-2", "1E+1", "0E-8", "12.3400", "+5", "007.5",
        ] {
            let from_string = exact(&Value::String(t.into())).unwrap();
            let expected = match t {
                "1e3" => dec("1000"),
                "1.5E-2" => dec("0.015"),
                "1E+1" => dec("10"),
                "0E-8" | "0" | "-0" => Decimal::ZERO,
                "+5" => dec("5"),
                "007.5" => dec("7.5"),
                other => dec(other),
            };
            assert_eq!(from_string, expected, "{t}");
            if serde_json::Number::from_str(t).is_ok() {
                assert_eq!(exact(&num(t)).unwrap(), expected, "{t}");
            }
        }
    }

    #[test]
    fn python_float_reprs() {
        assert_eq!(exact(&num("1e-04")).unwrap(), dec("0.0001"));
        assert_eq!(round(&num("1e-05")).unwrap(), Decimal::ZERO);
        assert_eq!(exact(&num("1.5e+10")).unwrap(), dec("15000000000"));
        assert_eq!(round(&num("187.44000244140625")).unwrap(), dec("187.44"));
        assert_eq!(round(&num("0.30000000000000004")).unwrap(), dec("0.3"));
        let e = exact(&num("0.30000000000000004")).unwrap_err();
        assert_eq!(e.kind(), "bad_value");
        assert_eq!(
            e.to_string(),
            "data.price: \"0.30000000000000004\" would be rounded by NUMERIC(15,4); trade amounts must be exact"
        );
    }

    #[test]
    fn trailing_zeros_do_not_count_as_precision() {
        assert_eq!(exact(&num("1.230000000")).unwrap(), dec("1.23"));
        assert_eq!(exact(&num("100.00000e-2")).unwrap(), dec("1"));
        assert_eq!(exact(&num("0.00001e1")).unwrap(), dec("0.0001"));
        assert_eq!(exact(&num("0.00001")).unwrap_err().kind(), "bad_value");
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round(&num("1.00005")).unwrap(), dec("1.0001"));
        assert_eq!(round(&num("1.000049999")).unwrap(), dec("1"));
        assert_eq!(round(&num("-1.00005")).unwrap(), dec("-1.0001"));
        assert_eq!(round(&num("2.00015")).unwrap(), dec("2.0002"));
        assert_eq!(round(&num("0.00005")).unwrap(), dec("0.0001"));
        assert_eq!(round(&num("0.000049")).unwrap(), Decimal::ZERO);
        assert_eq!(round(&num("-0.00001")).unwrap(), Decimal::ZERO);
        assert!(!round(&num("-0.00001")).unwrap().is_sign_negative());
        // Same answer as rust_decimal's own strategy on values it can hold.
        for t in ["123.456789", "-0.99995", "5.55555", "99999999999.99994"] {
            assert_eq!(
                round(&num(t)).unwrap(),
                dec(t).round_dp_with_strategy(
                    4,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero
                ),
                "{t}"
            );
        }
    }

    #[test]
    fn numeric_15_4_bound() {
        assert_eq!(exact(&num("99999999999")).unwrap(), dec("99999999999"));
        assert_eq!(
            exact(&num("-99999999999.9999")).unwrap(),
            dec("-99999999999.9999")
        );
        for t in [
            "100000000000",
            "-100000000000",
            "1e11",
            "123456789012.5",
            "1e400",
            "-1e400",
        ] {
            let e = exact(&num(t)).unwrap_err();
            assert_eq!(e.kind(), "out_of_range", "{t}");
            assert!(e.to_string().starts_with("data.price: "), "{e}");
        }
        // Rounding up into 10^11 overflows, as it would in PostgreSQL.
        assert_eq!(
            round(&num("99999999999.99995")).unwrap_err().kind(),
            "out_of_range"
        );
        assert_eq!(
            round(&num("99999999999.99994")).unwrap(),
            dec("99999999999.9999")
        );
        assert_eq!(
            exact(&num("1e400")).unwrap_err().to_string(),
            "data.price: \"1e+400\" does not fit NUMERIC(15,4) (|v| < 10^11)"
        );
    }

    #[test]
    fn absurd_exponents_are_cheap_and_safe() {
        assert_eq!(
            round(&num("1e-999999999999999999999")).unwrap(),
            Decimal::ZERO
        );
        assert_eq!(
            exact(&num("1e-999999999999999999999")).unwrap_err().kind(),
            "bad_value"
        );
        assert_eq!(
            exact(&num("1e999999999999999999999")).unwrap_err().kind(),
            "out_of_range"
        );
        assert_eq!(
            exact(&num("0e999999999999999999999")).unwrap(),
            Decimal::ZERO
        );
        let long = format!("0.{}1", "0".repeat(60_000));
        assert_eq!(round(&Value::String(long)).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn non_numbers() {
        for (v, kind) in [
            (Value::Bool(true), "bad_type"),
            (Value::Null, "bad_type"),
            (serde_json::json!([1]), "bad_type"),
            (serde_json::json!({"a": 1}), "bad_type"),
            (Value::String(String::new()), "bad_value"),
            (Value::String("NaN".into()), "bad_value"),
            (Value::String("Infinity".into()), "bad_value"),
            (Value::String("-inf".into()), "bad_value"),
            (Value::String(" 1".into()), "bad_value"),
            (Value::String("1 ".into()), "bad_value"),
            (Value::String("1,000".into()), "bad_value"),
            (Value::String(".5".into()), "bad_value"),
            (Value::String("5.".into()), "bad_value"),
            (Value::String("1e".into()), "bad_value"),
            (Value::String("0x10".into()), "bad_value"),
            (Value::String("1\u{0}".into()), "bad_value"),
            (Value::String("١".into()), "bad_value"),
        ] {
            let e = exact(&v).unwrap_err();
            assert_eq!(e.kind(), kind, "{v:?}");
            assert!(e.to_string().starts_with("data.price: "), "{e}");
            assert!(!e.to_string().contains('\0'));
        }
        assert_eq!(
            exact(&Value::String("NaN".into())).unwrap_err().to_string(),
            "data.price: \"NaN\" is not a finite number"
        );
        assert_eq!(
            exact(&Value::Bool(false)).unwrap_err().to_string(),
            "data.price: expected a decimal number or numeric string, found a boolean"
        );
    }

    #[test]
    fn ratios() {
        let r = |t: &str| ratio_at_least_half("data.win_rate", &num(t));
        assert!(!r("0").unwrap());
        assert!(!r("0.0").unwrap());
        assert!(r("1").unwrap());
        assert!(r("1.000").unwrap());
        assert!(r("0.5").unwrap());
        assert!(r("5e-1").unwrap());
        assert!(!r("0.49999999999999999999999999999999999").unwrap());
        assert!(!r("0.05").unwrap());
        assert!(!r("1e-30").unwrap());
        assert!(r("0.75").unwrap());
        for t in ["1.0000000000000000000000000001", "-0.1", "2", "10", "1e400"] {
            assert_eq!(r(t).unwrap_err().kind(), "out_of_range", "{t}");
        }
        assert!(!r("-0").unwrap());
    }

    #[test]
    fn integers() {
        let i = |v: Value| non_negative_i64("data.volume", &v);
        assert_eq!(i(num("1234")).unwrap(), 1234);
        assert_eq!(i(num("1234.0")).unwrap(), 1234);
        assert_eq!(i(num("1.234e3")).unwrap(), 1234);
        assert_eq!(i(num("0")).unwrap(), 0);
        assert_eq!(i(num("-0.0")).unwrap(), 0);
        assert_eq!(i(Value::String("1234".into())).unwrap(), 1234);
        assert_eq!(i(num("9223372036854775807")).unwrap(), i64::MAX);
        assert_eq!(i(num("1.5")).unwrap_err().kind(), "bad_value");
        assert_eq!(i(num("-1")).unwrap_err().kind(), "out_of_range");
        assert_eq!(
            i(num("9223372036854775808")).unwrap_err().kind(),
            "out_of_range"
        );
        assert_eq!(i(num("1e400")).unwrap_err().kind(), "out_of_range");
        assert_eq!(i(Value::Bool(true)).unwrap_err().kind(), "bad_type");
        assert_eq!(
            i(Value::String("NaN".into())).unwrap_err().kind(),
            "bad_value"
        );
    }

    fn ts(s: &str, allow_date: bool) -> Result<DateTime<Utc>, DecodeError> {
        timestamp("timestamp", &Value::String(s.into()), allow_date)
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn timestamp_forms() {
        let want = utc("2025-11-24T15:04:05.123456Z");
        assert_eq!(ts("2025-11-24T15:04:05.123456", false).unwrap(), want);
        assert_eq!(ts("2025-11-24 15:04:05.123456", false).unwrap(), want);
        assert_eq!(ts("2025-11-24T15:04:05.123456Z", false).unwrap(), want);
        assert_eq!(ts("2025-11-24T15:04:05.123456+00:00", false).unwrap(), want);
        assert_eq!(ts("2025-11-24T10:04:05.123456-05:00", false).unwrap(), want);
        assert_eq!(ts("2025-11-24 10:04:05.123456-05:00", false).unwrap(), want);
        assert_eq!(
            ts("2025-11-24T15:04:05", false).unwrap(),
            utc("2025-11-24T15:04:05Z")
        );
        assert_eq!(ts("2025-11-24", true).unwrap(), utc("2025-11-24T00:00:00Z"));
        // Nanoseconds are truncated to what PostgreSQL keeps, never rounded across a boundary.
        assert_eq!(
            ts("2025-11-24T23:59:59.999999999", false).unwrap(),
            utc("2025-11-24T23:59:59.999999Z")
        );
    }

    #[test]
    fn bad_timestamps() {
        for s in [
            "",
            "2025-11-24",
            "2025-11-24T15:04",
            "2025-13-01T00:00:00",
            "2025-02-30T00:00:00",
            "24/11/2025 15:04:05",
            "2025-11-24T15:04:05+00:00Z",
            "2025-11-24T15:04:05+24:00",
            " 2025-11-24T15:04:05",
            "2025-11-24T15:04:05 ",
            "1732460645",
            "2025-11-24T15:04:05\u{0}",
            "2016-12-31T23:59:60Z",
        ] {
            let e = ts(s, false).unwrap_err();
            assert_eq!(e.kind(), "bad_value", "{s:?}");
            assert!(!e.to_string().contains('\0'));
        }
        assert_eq!(ts("2025-11-2", true).unwrap_err().kind(), "bad_value");
        for s in [
            "1899-12-31T23:59:59",
            "3000-01-01T00:00:00",
            "0000-01-01T00:00:00Z",
            "9999-12-31",
            "1900-01-01T00:30:00+01:00",
        ] {
            assert_eq!(ts(s, true).unwrap_err().kind(), "out_of_range", "{s}");
        }
        assert!(ts("1900-01-01T00:00:00", false).is_ok());
        assert!(ts("2999-12-31T23:59:59.999999", false).is_ok());
        assert_eq!(
            timestamp("timestamp", &num("1732460645"), false)
                .unwrap_err()
                .kind(),
            "bad_type"
        );
    }
}
