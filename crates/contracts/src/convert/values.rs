//! Parameter values (including the UL decimal strings) and result values, alone and in maps.

use std::collections::{BTreeMap, HashMap};

use fleetcmd_domain::error::{ValidationError, quote};
use fleetcmd_domain::model::{ParameterValue, ResultValue};

use super::{key_path, path};
use crate::pb;

/// A UL value: a decimal string of 1–20 ASCII digits that fits in a `u64` (no sign, no
/// spaces; leading zeros are allowed, as the reference's pattern `^[0-9]*$` does).
pub fn parse_ul(field: &str, s: &str) -> Result<u64, ValidationError> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValidationError::new(
            field,
            format!("must be a decimal string of 1–20 digits, got {}", quote(s)),
        ));
    }
    s.parse::<u64>().map_err(|_| {
        ValidationError::new(
            field,
            format!(
                "must fit in an unsigned 64-bit integer (at most {}), got {s}",
                u64::MAX
            ),
        )
    })
}

/// A parameter value at `field` (e.g. `parameters["temp"]`): exactly one member must be set
/// (else an error naming `field`); a UL member must pass [`parse_ul`] (else `field.ul`); a
/// DOUBLE must be finite (else an error naming `field`): protobuf carries NaN and ±infinity,
/// but no payload can hold them (JSON has no such numbers), so they are refused here, before
/// the request goes anywhere, for every call that takes values (parameters, default and fixed
/// values).
pub fn parameter_value_from_pb(
    field: &str,
    v: pb::ParameterValue,
) -> Result<ParameterValue, ValidationError> {
    use pb::parameter_value::Value;
    Ok(match v.value {
        Some(Value::S(s)) => ParameterValue::S(s),
        Some(Value::B(b)) => ParameterValue::B(b),
        Some(Value::I(i)) => ParameterValue::I(i),
        Some(Value::L(l)) => ParameterValue::L(l),
        Some(Value::D(d)) if !d.is_finite() => {
            return Err(ValidationError::new(
                field,
                format!("a DOUBLE value must be finite, got {d}"),
            ));
        }
        Some(Value::D(d)) => ParameterValue::D(d),
        Some(Value::Bin(bin)) => ParameterValue::Bin(bin),
        Some(Value::Ul(ul)) => ParameterValue::Ul(parse_ul(&path(field, "ul"), &ul)?),
        None => {
            return Err(ValidationError::new(
                field,
                "exactly one of s, b, i, l, d, bin, ul must be set",
            ));
        }
    })
}

impl From<ParameterValue> for pb::ParameterValue {
    fn from(v: ParameterValue) -> Self {
        use pb::parameter_value::Value;
        let value = match v {
            ParameterValue::S(s) => Value::S(s),
            ParameterValue::B(b) => Value::B(b),
            ParameterValue::I(i) => Value::I(i),
            ParameterValue::L(l) => Value::L(l),
            ParameterValue::D(d) => Value::D(d),
            ParameterValue::Bin(bin) => Value::Bin(bin),
            ParameterValue::Ul(ul) => Value::Ul(ul.to_string()),
        };
        Self { value: Some(value) }
    }
}

/// A parameter map at `field` (e.g. `parameters`); entries are checked in key order, so the
/// error (naming `field["key"]`) is the same on every call.
pub fn parameters_from_pb(
    field: &str,
    map: HashMap<String, pb::ParameterValue>,
) -> Result<BTreeMap<String, ParameterValue>, ValidationError> {
    map_from_pb(field, map, parameter_value_from_pb)
}

/// The inverse of [`parameters_from_pb`].
pub fn parameters_to_pb(
    map: BTreeMap<String, ParameterValue>,
) -> HashMap<String, pb::ParameterValue> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// A result value at `field` (e.g. `result["log"]`): exactly one of `s`, `b`, `bin`.
pub fn result_value_from_pb(
    field: &str,
    v: pb::ResultValue,
) -> Result<ResultValue, ValidationError> {
    use pb::result_value::Value;
    match v.value {
        Some(Value::S(s)) => Ok(ResultValue::S(s)),
        Some(Value::B(b)) => Ok(ResultValue::B(b)),
        Some(Value::Bin(bin)) => Ok(ResultValue::Bin(bin)),
        None => Err(ValidationError::new(
            field,
            "exactly one of s, b, bin must be set",
        )),
    }
}

impl From<ResultValue> for pb::ResultValue {
    fn from(v: ResultValue) -> Self {
        use pb::result_value::Value;
        let value = match v {
            ResultValue::S(s) => Value::S(s),
            ResultValue::B(b) => Value::B(b),
            ResultValue::Bin(bin) => Value::Bin(bin),
        };
        Self { value: Some(value) }
    }
}

/// A result map at `field` (e.g. `result`), checked in key order like [`parameters_from_pb`].
pub fn results_from_pb(
    field: &str,
    map: HashMap<String, pb::ResultValue>,
) -> Result<BTreeMap<String, ResultValue>, ValidationError> {
    map_from_pb(field, map, result_value_from_pb)
}

/// A wire map converted entry by entry with `convert(field["key"], value)`, in key order: a
/// `HashMap` iterates in a different order on every call, and the first error must not.
fn map_from_pb<P, D>(
    field: &str,
    map: HashMap<String, P>,
    convert: fn(&str, P) -> Result<D, ValidationError>,
) -> Result<BTreeMap<String, D>, ValidationError> {
    let sorted: BTreeMap<String, P> = map.into_iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| {
            let value = convert(&key_path(field, &k), v)?;
            Ok((k, value))
        })
        .collect()
}

/// The inverse of [`results_from_pb`].
pub fn results_to_pb(map: BTreeMap<String, ResultValue>) -> HashMap<String, pb::ResultValue> {
    map.into_iter().map(|(k, v)| (k, v.into())).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::convert::test_support::{err_field, pv, ul};

    #[test]
    fn parameter_values_round_trip() {
        let values = [
            ParameterValue::S("hello".into()),
            ParameterValue::B(true),
            ParameterValue::I(i32::MIN),
            ParameterValue::L(i64::MAX),
            ParameterValue::D(-2.5),
            ParameterValue::Bin(vec![0, 255, 7]),
            ParameterValue::Ul(0),
            ParameterValue::Ul(u64::MAX),
        ];
        for v in values {
            let p = pb::ParameterValue::from(v.clone());
            assert!(p.value.is_some());
            assert_eq!(parameter_value_from_pb("p", p), Ok(v));
        }
        assert_eq!(
            pb::ParameterValue::from(ParameterValue::Ul(u64::MAX)),
            ul("18446744073709551615")
        );
        let map = BTreeMap::from([
            ("a".to_string(), ParameterValue::I(1)),
            ("b".to_string(), ParameterValue::S("x".into())),
        ]);
        let p = parameters_to_pb(map.clone());
        assert_eq!(p.len(), 2);
        assert_eq!(parameters_from_pb("parameters", p), Ok(map));
    }

    #[test]
    fn ul_edge_cases() {
        let f = "parameters[\"n\"]";
        assert_eq!(
            parameter_value_from_pb(f, ul("18446744073709551615")),
            Ok(ParameterValue::Ul(u64::MAX))
        );
        assert_eq!(
            parameter_value_from_pb(f, ul("0")),
            Ok(ParameterValue::Ul(0))
        );
        assert_eq!(
            parameter_value_from_pb(f, ul("00000000000000000042")),
            Ok(ParameterValue::Ul(42)),
            "20 digits with leading zeros fit the pattern"
        );
        let e = parameter_value_from_pb(f, ul("18446744073709551616")).unwrap_err();
        assert_eq!(e.field, "parameters[\"n\"].ul");
        assert!(e.message.contains("unsigned 64-bit"), "{e}");
        for bad in [
            "-1",
            "",
            "+1",
            " 1",
            "1.0",
            "1e3",
            "000000000000000000001",
            "٣",
        ] {
            let e = parameter_value_from_pb(f, ul(bad)).unwrap_err();
            assert_eq!(e.field, "parameters[\"n\"].ul", "{bad:?}");
            assert!(e.message.contains("1–20 digits"), "{bad:?}: {e}");
        }
        assert_eq!(parse_ul("x", "123"), Ok(123));
    }

    #[test]
    fn non_finite_doubles_are_refused_naming_the_value() {
        use pb::parameter_value::Value;
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -f64::NAN] {
            let e = parameter_value_from_pb("parameters[\"v\"]", pv(Value::D(d))).unwrap_err();
            assert_eq!(e.field, "parameters[\"v\"]", "{d}");
            assert!(e.message.contains("finite"), "{d}: {e}");
            let map = HashMap::from([("v".to_string(), pv(Value::D(d)))]);
            assert_eq!(
                err_field(parameters_from_pb("parameters", map)),
                "parameters[\"v\"]"
            );
        }
        // The extremes of the finite range, and -0, are values like any other.
        for d in [f64::MAX, f64::MIN, f64::MIN_POSITIVE, -0.0] {
            assert_eq!(
                parameter_value_from_pb("p", pv(Value::D(d))),
                Ok(ParameterValue::D(d))
            );
        }
    }

    #[test]
    fn long_keys_and_ul_strings_are_quoted_bounded() {
        let key = "k".repeat(100_000);
        let map = HashMap::from([(key, pb::ParameterValue { value: None })]);
        let e = parameters_from_pb("parameters", map).unwrap_err();
        assert!(e.field.len() < 100, "{}", e.field);
        assert!(e.field.starts_with("parameters[\"kkk") && e.field.ends_with("…\"]"));
        let e = parse_ul("p.ul", &"9".repeat(5_000)).unwrap_err();
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(e.message.contains("(5000 characters)"), "{}", e.message);
    }

    #[test]
    fn empty_parameter_oneof_names_the_entry() {
        let map = HashMap::from([
            ("temp".to_string(), pb::ParameterValue { value: None }),
            ("ok".to_string(), pv(pb::parameter_value::Value::B(false))),
        ]);
        let e = parameters_from_pb("parameters", map).unwrap_err();
        assert_eq!(e.field, "parameters[\"temp\"]");
        assert_eq!(
            e.message,
            "exactly one of s, b, i, l, d, bin, ul must be set"
        );
        assert_eq!(
            e.to_string(),
            "invalid parameters[\"temp\"]: exactly one of s, b, i, l, d, bin, ul must be set"
        );
        // With several bad entries the first in key order is reported, every time.
        let map = HashMap::from([("b".to_string(), ul("x")), ("a".to_string(), ul("-1"))]);
        assert_eq!(
            err_field(parameters_from_pb("parameters", map)),
            "parameters[\"a\"].ul"
        );
    }

    #[test]
    fn result_values_round_trip_and_empty_oneof() {
        for v in [
            ResultValue::S("s".into()),
            ResultValue::B(false),
            ResultValue::Bin(vec![1, 2]),
        ] {
            assert_eq!(result_value_from_pb("r", v.clone().into()), Ok(v));
        }
        let map = BTreeMap::from([("log".to_string(), ResultValue::B(true))]);
        assert_eq!(
            results_from_pb("result", results_to_pb(map.clone())),
            Ok(map)
        );
        let bad = HashMap::from([("log".to_string(), pb::ResultValue { value: None })]);
        let e = results_from_pb("result", bad).unwrap_err();
        assert_eq!(e.field, "result[\"log\"]");
        assert_eq!(e.message, "exactly one of s, b, bin must be set");
    }

    proptest! {
        #[test]
        fn ul_round_trip_any(n in any::<u64>()) {
            let back = parameter_value_from_pb("p", ParameterValue::Ul(n).into());
            prop_assert_eq!(back, Ok(ParameterValue::Ul(n)));
        }
    }
}
