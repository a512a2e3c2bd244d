//! JSON exactly as the Python publishers write it: `json.dumps` with its default `", "` / `": "`
//! separators and `ensure_ascii=True`, dicts in insertion order, Python's float `repr` and
//! `datetime.isoformat()`.
//!
//! This is the project's one Python-JSON writer: the generator writes its payloads with it, and
//! the daemon's decoder tests (a dev-dependency) write their fixtures with it. It owns text only;
//! it must not import `trading-sync` (an oracle that borrowed the daemon's code would agree with
//! the daemon's bugs).

use std::fmt;

use chrono::{DateTime, Timelike, Utc};
use rust_decimal::Decimal;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A Python value as `json.dumps` sees it: dicts keep insertion order (serde_json's `Map` sorts
/// its keys), numbers keep the exact text Python prints for them.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    None,
    Bool(bool),
    /// An int's digits or a float's `repr`, as written.
    Number(String),
    Str(String),
    List(Vec<Py>),
    Dict(Vec<(String, Py)>),
}

impl Py {
    /// `json.dumps(self)` with the defaults: `", "` / `": "` separators, `ensure_ascii=True`.
    pub fn dumps(&self) -> String {
        let mut out = String::with_capacity(400);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Py::None => out.push_str("null"),
            Py::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Py::Number(text) => out.push_str(text),
            Py::Str(s) => write_python_string(s, out),
            Py::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Py::Dict(items) => {
                out.push('{');
                for (i, (key, value)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_python_string(key, out);
                    out.push_str(": ");
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    /// A Python int.
    pub fn int(i: i64) -> Py {
        Py::Number(i.to_string())
    }

    /// A Python str.
    pub fn str(s: impl Into<String>) -> Py {
        Py::Str(s.into())
    }

    /// The value `json.loads` would give for `value`, numbers with their exact text (serde_json's
    /// `arbitrary_precision` keeps it); objects in the value's own key order.
    pub fn from_value(value: &Value) -> Py {
        match value {
            Value::Null => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::Number(n) => Py::Number(n.to_string()),
            Value::String(s) => Py::Str(s.clone()),
            Value::Array(items) => Py::List(items.iter().map(Py::from_value).collect()),
            Value::Object(map) => Py::Dict(
                map.iter()
                    .map(|(k, v)| (k.clone(), Py::from_value(v)))
                    .collect(),
            ),
        }
    }
}

/// `json.dumps(value)` for a serde_json value, keys in the value's own order (sorted, unless the
/// value was built in order). Numbers are written with their exact text.
pub fn python_dumps(value: &Value) -> String {
    Py::from_value(value).dumps()
}

/// Python's `ensure_ascii` string escaping: printable ASCII as is, the five short escapes, and
/// everything else (other control characters, DEL, non-ASCII) as lowercase `\uXXXX`, UTF-16
/// surrogate pairs above the BMP.
fn write_python_string(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// `repr(float(d))` for a decimal with at most 4 places and 15 significant digits, the only kind
/// the generator makes: such a value survives the trip through f64, so its shortest repr is the
/// decimal itself, normalized, with `.0` when integral (Python switches to exponents only below
/// 1e-4 or from 1e16).
pub fn float_repr(d: Decimal) -> String {
    debug_assert!(d.scale() <= 4 && d.abs() < Decimal::from(10_i64.pow(11)));
    let text = d.normalize().to_string();
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// Python's `repr(f)` for a finite float: the shortest round-trip digits (Rust's `{}` and `{:e}`
/// give the same digits), positional for decimal exponents in -4..16 with a `.0` when integral,
/// otherwise `1.5e+16` / `1e-05`.
pub fn python_float_repr(f: f64) -> String {
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// `datetime.isoformat()`: the fraction only when microseconds are non-zero; `+00:00` for an
/// aware datetime, nothing for `utcnow()`'s naive one.
pub fn isoformat(t: DateTime<Utc>, aware: bool) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = t.nanosecond() / 1_000;
    if micros != 0 {
        s.push_str(&format!(".{micros:06}"));
    }
    if aware {
        s.push_str("+00:00");
    }
    s
}

/// A JSON object as a Python dict holds it: keys keep their order (serde_json's `Map` sorts
/// them) and values keep their exact text, so a payload written by `json.dumps` can be edited
/// and written back as the publisher would have written the edited dict.
#[derive(Debug, Clone, Default)]
pub struct PyDict(pub Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for PyDict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PyDict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PyDict, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(PyDict(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl PyDict {
    /// `json.loads(text)` of an object, keeping order and the values' text.
    pub fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// `d[key] = value`: replaces the value in place, or appends the key as Python does.
    pub fn set(&mut self, key: &str, value: &Value) -> &mut Self {
        self.set_raw(key, python_dumps(value))
    }

    /// As [`PyDict::set`], with the value's JSON text given as is.
    ///
    /// # Panics
    ///
    /// If `raw` is not JSON: a caller's bug, not an input to handle.
    pub fn set_raw(&mut self, key: &str, raw: String) -> &mut Self {
        let raw = RawValue::from_string(raw).expect("valid JSON");
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = raw,
            None => self.0.push((key.to_owned(), raw)),
        }
        self
    }

    /// `d.pop(key, None)`.
    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.0.retain(|(k, _)| k != key);
        self
    }

    /// The value's JSON text.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.get())
    }

    /// `json.dumps(d)`. Values are written with the text they were parsed or set with, which is
    /// `json.dumps`'s own text when they came from it.
    pub fn dumps(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_python_string(key, &mut out);
            out.push_str(": ");
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use std::str::FromStr;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    #[test]
    fn dumps_matches_python() {
        let v = Py::Dict(vec![
            ("type".into(), Py::str("t")),
            (
                "x".into(),
                Py::List(vec![Py::int(1), Py::str("é\u{0}\u{7f}😀\u{8}\u{c}\"\\")]),
            ),
            ("n".into(), Py::None),
            ("b".into(), Py::Bool(true)),
            ("f".into(), Py::Number(float_repr(dec("100")))),
        ]);
        // What CPython 3 prints for the same dict.
        assert_eq!(
            v.dumps(),
            r#"{"type": "t", "x": [1, "\u00e9\u0000\u007f\ud83d\ude00\b\f\"\\"], "n": null, "b": true, "f": 100.0}"#
        );
        let value: Value = serde_json::from_str(r#"{"b": [1.50, "x"], "a": {"c": null}}"#).unwrap();
        assert_eq!(
            python_dumps(&value),
            r#"{"a": {"c": null}, "b": [1.50, "x"]}"#
        );
        // A serde_json object is sorted, as json.dumps(..., sort_keys=True) would write it.
        let v = serde_json::json!({"type": "t", "x": [1, "é\u{0}\u{7f}😀"], "n": null});
        assert_eq!(
            python_dumps(&v),
            r#"{"n": null, "type": "t", "x": [1, "\u00e9\u0000\u007f\ud83d\ude00"]}"#
        );
        // Every control character: the short escapes where Python has them, \u00XX otherwise.
        let controls: String = (0u8..0x20).map(char::from).collect();
        assert_eq!(
            python_dumps(&Value::String(controls)),
            concat!(
                r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
                r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b"#,
                r#"\u001c\u001d\u001e\u001f""#
            )
        );
    }

    #[test]
    fn python_float_repr_matches_python() {
        for (f, want) in [
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (100.0, "100.0"),
            (187.44000244140625, "187.44000244140625"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0001, "-0.0001"),
            (1234567890123456.0, "1234567890123456.0"),
            (12345678901234567.0, "1.2345678901234568e+16"),
        ] {
            assert_eq!(python_float_repr(f), want);
        }
        assert_eq!(
            python_float_repr(f64::from(187.44f32)),
            "187.44000244140625"
        );
    }

    #[test]
    fn float_repr_is_the_repr_of_the_float() {
        for (d, want) in [
            ("187.25", "187.25"),
            ("187.2500", "187.25"),
            ("-18725", "-18725.0"),
            ("0", "0.0"),
            ("0.0001", "0.0001"),
            ("99999999999.9999", "99999999999.9999"),
            ("0.1", "0.1"),
        ] {
            assert_eq!(float_repr(dec(d)), want, "{d}");
        }
        let mut rng = crate::Rng::new(3);
        for _ in 0..100_000 {
            let d = Decimal::new(rng.range(-999_999_999_999_999, 1_000_000_000_000_000), 4);
            let f: f64 = d.to_string().parse().unwrap();
            assert_eq!(float_repr(d), python_float_repr(f), "{d}");
        }
    }

    #[test]
    fn isoformat_like_python() {
        let t = Utc.with_ymd_and_hms(2025, 11, 24, 15, 4, 5).unwrap();
        assert_eq!(isoformat(t, false), "2025-11-24T15:04:05");
        assert_eq!(isoformat(t, true), "2025-11-24T15:04:05+00:00");
        let t = t + Duration::microseconds(120);
        assert_eq!(isoformat(t, false), "2025-11-24T15:04:05.000120");
    }

    #[test]
    fn pydict_keeps_order_and_text() {
        let text = r#"{"type": "t", "data": {"b": 1.50, "a": [1, 2]}, "z": null}"#;
        assert_eq!(PyDict::parse(text).unwrap().dumps(), text);
        let mut d = PyDict::parse(text).unwrap();
        assert_eq!(d.get("data"), Some(r#"{"b": 1.50, "a": [1, 2]}"#));
        d.remove("type")
            .set("z", &serde_json::json!("é"))
            .set("new", &Value::Bool(false));
        assert_eq!(
            d.dumps(),
            r#"{"data": {"b": 1.50, "a": [1, 2]}, "z": "\u00e9", "new": false}"#
        );
        assert!(PyDict::parse("[1]").is_err());
    }
}
