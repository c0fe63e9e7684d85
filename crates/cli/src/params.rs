//! Parameter values on the command line (`--param name=TYPE:VALUE`) and command parameter
//! definitions as JSON (`--parameters`), converted to the protobuf types.
//!
//! The JSON mirrors the AWS CLI's `mandatoryParameters` (camelCase, value members `s, b, i,
//! l, d, bin, ul` in either case); snake_case keys are accepted too. It is walked by hand
//! rather than derived so that every error names the exact place, e.g.
//! `parameters[0].defaultValue.i: expected a 32-bit integer, got "20"`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fleetcmd_contracts::pb;
use pb::parameter_value::Value;
use serde_json::{Map, Value as Json};

const PARAM_SYNTAX: &str =
    "expected NAME=TYPE:VALUE with TYPE one of s, b, i, l, d, bin (base64), ul";

/// Parses `name=TYPE:VALUE`. The name ends at the first `=`, the type at the next `:`; the
/// value is everything after (it may hold `=` and `:`). Errors say what is wrong, not which
/// flag and value: clap adds those.
pub fn parse_param_arg(text: &str) -> Result<(String, pb::ParameterValue), String> {
    let Some((name, typed)) = text.split_once('=') else {
        return Err(PARAM_SYNTAX.to_string());
    };
    if name.is_empty() {
        return Err(format!("the name before '=' is empty; {PARAM_SYNTAX}"));
    }
    let Some((ty, raw)) = typed.split_once(':') else {
        return Err(PARAM_SYNTAX.to_string());
    };
    Ok((name.to_string(), parse_typed_value(ty, raw)?))
}

/// Parses a value of the given type tag (`s, b, i, l, d, bin, ul`, any case).
pub fn parse_typed_value(ty: &str, raw: &str) -> Result<pb::ParameterValue, String> {
    let value = match ty.to_ascii_lowercase().as_str() {
        "s" => Value::S(raw.to_string()),
        "b" => match raw {
            "true" => Value::B(true),
            "false" => Value::B(false),
            _ => return Err(format!("b (boolean) must be true or false, got {raw:?}")),
        },
        "i" => Value::I(
            raw.parse()
                .map_err(|_| format!("i (INTEGER) must be a 32-bit signed integer, got {raw:?}"))?,
        ),
        "l" => Value::L(
            raw.parse()
                .map_err(|_| format!("l (LONG) must be a 64-bit signed integer, got {raw:?}"))?,
        ),
        "d" => {
            let d: f64 = raw
                .parse()
                .map_err(|_| format!("d (DOUBLE) must be a number, got {raw:?}"))?;
            if !d.is_finite() {
                return Err(format!("d (DOUBLE) must be finite, got {raw:?}"));
            }
            Value::D(d)
        }
        "bin" => Value::Bin(
            BASE64
                .decode(raw)
                .map_err(|e| format!("bin (BINARY) must be standard base64, got {raw:?} ({e})"))?,
        ),
        "ul" => Value::Ul(parse_unsigned(raw).ok_or_else(|| {
            format!("ul (UNSIGNEDLONG) must be an unsigned 64-bit integer, got {raw:?}")
        })?),
        other => {
            return Err(format!(
                "unknown type {other:?}; expected one of s, b, i, l, d, bin, ul"
            ));
        }
    };
    Ok(pb::ParameterValue { value: Some(value) })
}

/// Decimal digits only (no sign), within u64; returned normalised (`007` → `7`).
fn parse_unsigned(raw: &str) -> Option<String> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<u64>().ok().map(|n| n.to_string())
}

/// Collects `--param` values into the request map; a name given twice is an error.
pub fn collect_params(
    params: &[(String, pb::ParameterValue)],
) -> Result<std::collections::HashMap<String, pb::ParameterValue>, String> {
    let mut map = std::collections::HashMap::with_capacity(params.len());
    for (name, value) in params {
        if map.insert(name.clone(), value.clone()).is_some() {
            return Err(format!("--param {name} is given more than once"));
        }
    }
    Ok(map)
}

/// Parses a JSON array of parameter definitions.
pub fn parse_parameters_json(text: &str) -> Result<Vec<pb::CommandParameter>, String> {
    let json: Json =
        serde_json::from_str(text).map_err(|e| format!("parameters: invalid JSON: {e}"))?;
    let Json::Array(items) = json else {
        return Err(format!(
            "parameters: expected a JSON array of parameter objects, got {}",
            kind(&json)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parameter(&format!("parameters[{i}]"), item))
        .collect()
}

fn parameter(path: &str, json: &Json) -> Result<pb::CommandParameter, String> {
    let known = [
        "name",
        "type",
        "value",
        "defaultValue",
        "valueConditions",
        "description",
    ];
    let fields = Fields::new(path, json, &known)?;
    let name = match fields.get("name") {
        Some(v) => string(&format!("{path}.name"), v)?,
        None => return Err(format!("{path}: missing required field \"name\"")),
    };
    let ty = match fields.get("type") {
        Some(v) => {
            let from_name = pb::ParameterType::from_str_name;
            enum_name(&format!("{path}.type"), v, from_name, "type", TYPE_NAMES)?
        }
        None => pb::ParameterType::Unspecified as i32,
    };
    let value = fields
        .get("value")
        .map(|v| parameter_value(&format!("{path}.value"), v))
        .transpose()?;
    let default_value = fields
        .get("defaultValue")
        .map(|v| parameter_value(&format!("{path}.defaultValue"), v))
        .transpose()?;
    let value_conditions = match fields.get("valueConditions") {
        None => Vec::new(),
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, c)| condition(&format!("{path}.valueConditions[{i}]"), c))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "{path}.valueConditions: expected an array, got {}",
                kind(other)
            ));
        }
    };
    let description = fields
        .get("description")
        .map(|v| string(&format!("{path}.description"), v))
        .transpose()?
        .unwrap_or_default();
    Ok(pb::CommandParameter {
        name,
        r#type: ty,
        value,
        default_value,
        value_conditions,
        description,
    })
}

/// `{"i": 20}` and friends: exactly one member.
fn parameter_value(path: &str, json: &Json) -> Result<pb::ParameterValue, String> {
    let map = object(path, json)?;
    let Some((key, v)) = only_member(map) else {
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        return Err(format!(
            "{path}: exactly one of s, b, i, l, d, bin, ul must be set, found {}",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        ));
    };
    let at = format!("{path}.{key}");
    let value = match key.to_ascii_lowercase().as_str() {
        "s" => Value::S(string(&at, v)?),
        "b" => Value::B(
            v.as_bool()
                .ok_or_else(|| format!("{at}: expected true or false, got {}", show(v)))?,
        ),
        "i" => Value::I(
            v.as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| format!("{at}: expected a 32-bit integer, got {}", show(v)))?,
        ),
        "l" => Value::L(
            v.as_i64()
                .ok_or_else(|| format!("{at}: expected a 64-bit integer, got {}", show(v)))?,
        ),
        "d" => Value::D(
            v.as_f64()
                .ok_or_else(|| format!("{at}: expected a number, got {}", show(v)))?,
        ),
        "bin" => {
            let text = string(&at, v)?;
            Value::Bin(
                BASE64
                    .decode(&text)
                    .map_err(|e| format!("{at}: expected standard base64, got {text:?} ({e})"))?,
            )
        }
        "ul" => {
            let text = match v {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "{at}: expected an unsigned 64-bit integer (string or number), got {}",
                        show(other)
                    ));
                }
            };
            Value::Ul(parse_unsigned(&text).ok_or_else(|| {
                format!("{at}: expected an unsigned 64-bit integer, got {}", show(v))
            })?)
        }
        _ => {
            return Err(format!(
                "{path}: unknown member {key:?}; expected one of s, b, i, l, d, bin, ul"
            ));
        }
    };
    Ok(pb::ParameterValue { value: Some(value) })
}

fn condition(path: &str, json: &Json) -> Result<pb::ValueCondition, String> {
    let fields = Fields::new(path, json, &["comparisonOperator", "operand"])?;
    let op = match fields.get("comparisonOperator") {
        Some(v) => {
            let at = format!("{path}.comparisonOperator");
            let from_name = pb::ComparisonOperator::from_str_name;
            enum_name(&at, v, from_name, "operator", OPERATOR_NAMES)?
        }
        None => {
            return Err(format!(
                "{path}: missing required field \"comparisonOperator\""
            ));
        }
    };
    let operand = match fields.get("operand") {
        Some(v) => operand(&format!("{path}.operand"), v)?,
        None => return Err(format!("{path}: missing required field \"operand\"")),
    };
    Ok(pb::ValueCondition {
        comparison_operator: op,
        operand: Some(operand),
    })
}

fn operand(path: &str, json: &Json) -> Result<pb::ConditionOperand, String> {
    use pb::condition_operand::Operand;
    let map = object(path, json)?;
    let Some((key, v)) = only_member(map) else {
        return Err(format!(
            "{path}: exactly one of number, numbers, string, strings, numberRange must be \
             set, found {}",
            map.len()
        ));
    };
    let at = format!("{path}.{key}");
    let operand = match key.as_str() {
        "number" => Operand::Number(number(&at, v)?),
        "numbers" => Operand::Numbers(pb::StringList {
            values: list(&at, v, number)?,
        }),
        "string" => Operand::String(string(&at, v)?),
        "strings" => Operand::Strings(pb::StringList {
            values: list(&at, v, string)?,
        }),
        "numberRange" | "number_range" => {
            let fields = Fields::new(&at, v, &["min", "max"])?;
            let bound = |name: &str| match fields.get(name) {
                Some(b) => number(&format!("{at}.{name}"), b),
                None => Err(format!("{at}: missing required field {name:?}")),
            };
            Operand::NumberRange(pb::NumberRange {
                min: bound("min")?,
                max: bound("max")?,
            })
        }
        _ => {
            return Err(format!(
                "{path}: unknown member {key:?}; expected one of number, numbers, string, \
                 strings, numberRange"
            ));
        }
    };
    Ok(pb::ConditionOperand {
        operand: Some(operand),
    })
}

/// The fields of an object, looked up by their camelCase name whichever spelling was used
/// (camelCase or the proto's snake_case); unknown fields are errors (a typo must not
/// silently drop a condition).
struct Fields<'a> {
    values: Vec<(&'static str, &'a Json)>,
}

impl<'a> Fields<'a> {
    /// `known`: the camelCase names.
    fn new(path: &str, json: &'a Json, known: &[&'static str]) -> Result<Self, String> {
        let map = object(path, json)?;
        let mut values = Vec::with_capacity(map.len());
        for (key, value) in map {
            let Some(camel) = known
                .iter()
                .find(|camel| key == *camel || *key == snake_case(camel))
            else {
                return Err(format!(
                    "{path}: unknown field {key:?}; expected one of {}",
                    known.join(", ")
                ));
            };
            if values.iter().any(|(seen, _)| seen == camel) {
                return Err(format!("{path}: field {camel:?} is given twice"));
            }
            values.push((*camel, value));
        }
        Ok(Self { values })
    }

    fn get(&self, camel: &str) -> Option<&'a Json> {
        self.values
            .iter()
            .find(|(name, _)| *name == camel)
            .map(|(_, v)| *v)
    }
}

/// `defaultValue` → `default_value`.
fn snake_case(camel: &str) -> String {
    let mut snake = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
        }
        snake.push(c.to_ascii_lowercase());
    }
    snake
}

/// The member of an object that has exactly one (a oneof: `{"i": 20}`), else `None`.
fn only_member(map: &Map<String, Json>) -> Option<(&String, &Json)> {
    let mut members = map.iter();
    match (members.next(), members.next()) {
        (Some(member), None) => Some(member),
        _ => None,
    }
}

fn object<'a>(path: &str, json: &'a Json) -> Result<&'a Map<String, Json>, String> {
    json.as_object()
        .ok_or_else(|| format!("{path}: expected an object, got {}", kind(json)))
}

/// The names a parameter type and a comparison operator may be given by.
const TYPE_NAMES: &str = "STRING, INTEGER, LONG, DOUBLE, UNSIGNEDLONG, BOOLEAN, BINARY";
const OPERATOR_NAMES: &str = "EQUALS, NOT_EQUALS, LESS_THAN, LESS_THAN_EQUALS, GREATER_THAN, \
                              GREATER_THAN_EQUALS, IN_SET, NOT_IN_SET, IN_RANGE, NOT_IN_RANGE";

/// A proto enum given by its name, in any case; its unspecified value (`0`) is no name one
/// may give. An unknown name is an error naming the `kind` of value and its `names`.
fn enum_name<E: Into<i32>>(
    path: &str,
    json: &Json,
    from_name: fn(&str) -> Option<E>,
    kind: &str,
    names: &str,
) -> Result<i32, String> {
    let text = string(path, json)?;
    match from_name(&text.to_ascii_uppercase()).map(Into::into) {
        Some(n) if n != 0 => Ok(n),
        _ => Err(format!(
            "{path}: unknown {kind} {text:?}; expected one of {names}"
        )),
    }
}

fn string(path: &str, json: &Json) -> Result<String, String> {
    json.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{path}: expected a string, got {}", show(json)))
}

/// Operands are numbers carried as strings (as in the AWS model); JSON numbers are accepted
/// and kept in their written form.
fn number(path: &str, json: &Json) -> Result<String, String> {
    match json {
        Json::Number(n) => Ok(n.to_string()),
        Json::String(s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => Ok(s.clone()),
        Json::String(s) => Err(format!("{path}: expected a number, got {s:?}")),
        other => Err(format!(
            "{path}: expected a number (or a string holding one), got {}",
            show(other)
        )),
    }
}

fn list(
    path: &str,
    json: &Json,
    item: fn(&str, &Json) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let Json::Array(items) = json else {
        return Err(format!("{path}: expected an array, got {}", kind(json)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| item(&format!("{path}[{i}]"), v))
        .collect()
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// A short rendering of an offending value.
fn show(json: &Json) -> String {
    match json {
        Json::Array(_) | Json::Object(_) => kind(json).to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::condition_operand::Operand;

    fn v(value: Value) -> pb::ParameterValue {
        pb::ParameterValue { value: Some(value) }
    }

    #[test]
    fn param_arg_every_type() {
        let cases = [
            ("msg=s:hello world", Value::S("hello world".into())),
            ("msg=s:", Value::S(String::new())),
            ("url=s:http://x/?a=b", Value::S("http://x/?a=b".into())),
            ("on=b:true", Value::B(true)),
            ("on=B:false", Value::B(false)),
            ("temp=i:-20", Value::I(-20)),
            ("big=l:9007199254740993", Value::L(9_007_199_254_740_993)),
            ("ratio=d:0.25", Value::D(0.25)),
            ("ratio=d:1e3", Value::D(1000.0)),
            ("blob=bin:AAEC", Value::Bin(vec![0, 1, 2])),
            (
                "n=ul:18446744073709551615",
                Value::Ul("18446744073709551615".into()),
            ),
            ("n=ul:007", Value::Ul("7".into())),
        ];
        for (text, want) in cases {
            let (name, value) = parse_param_arg(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(name, text.split('=').next().unwrap());
            assert_eq!(value, v(want), "{text}");
        }
    }

    #[test]
    fn param_arg_errors_say_what_is_wrong() {
        let cases = [
            ("temp", "NAME=TYPE:VALUE"),
            ("=i:3", "name before '=' is empty"),
            ("temp=20", "NAME=TYPE:VALUE"),
            ("temp=int:20", "unknown type \"int\""),
            ("on=b:yes", "must be true or false"),
            ("temp=i:2147483648", "32-bit signed integer"),
            ("temp=i:1.5", "32-bit signed integer"),
            ("big=l:9223372036854775808", "64-bit signed integer"),
            ("ratio=d:abc", "must be a number"),
            ("ratio=d:NaN", "must be finite"),
            ("ratio=d:inf", "must be finite"),
            ("blob=bin:!!", "standard base64"),
            ("n=ul:-1", "unsigned 64-bit"),
            ("n=ul:18446744073709551616", "unsigned 64-bit"),
            ("n=ul:", "unsigned 64-bit"),
            ("n=ul:+5", "unsigned 64-bit"),
        ];
        for (text, want) in cases {
            let err = parse_param_arg(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn params_collect_and_reject_duplicates() {
        let params = vec![
            parse_param_arg("a=i:1").unwrap(),
            parse_param_arg("b=s:x").unwrap(),
        ];
        let map = collect_params(&params).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["a"], v(Value::I(1)));
        let dup = vec![
            parse_param_arg("a=i:1").unwrap(),
            parse_param_arg("a=i:2").unwrap(),
        ];
        assert_eq!(
            collect_params(&dup).unwrap_err(),
            "--param a is given more than once"
        );
    }

    #[test]
    fn parameters_json_converts_like_aws() {
        let text = r#"[{"name":"temp","type":"INTEGER","defaultValue":{"i":20},
            "valueConditions":[{"comparisonOperator":"IN_RANGE","operand":{"numberRange":{"min":"10","max":"30"}}}]},
            {"name":"mode","type":"string","description":"d","value":{"S":"eco"},
             "valueConditions":[{"comparisonOperator":"IN_SET","operand":{"strings":["eco","max"]}}]},
            {"name":"n","type":"UNSIGNEDLONG","default_value":{"ul":18446744073709551615},
             "value_conditions":[{"comparison_operator":"LESS_THAN","operand":{"number":100}},
                                 {"comparisonOperator":"NOT_IN_SET","operand":{"numbers":["1", 2.5]}}]},
            {"name":"blob","type":"BINARY","defaultValue":{"BIN":"AAEC"}},
            {"name":"x","defaultValue":{"d":1}}]"#;
        let params = parse_parameters_json(text).unwrap();
        assert_eq!(params.len(), 5);

        let temp = &params[0];
        assert_eq!(temp.name, "temp");
        assert_eq!(temp.r#type, pb::ParameterType::Integer as i32);
        assert_eq!(temp.default_value, Some(v(Value::I(20))));
        assert_eq!(temp.value, None);
        assert_eq!(
            temp.value_conditions,
            vec![pb::ValueCondition {
                comparison_operator: pb::ComparisonOperator::InRange as i32,
                operand: Some(pb::ConditionOperand {
                    operand: Some(Operand::NumberRange(pb::NumberRange {
                        min: "10".into(),
                        max: "30".into()
                    }))
                }),
            }]
        );

        let mode = &params[1];
        assert_eq!(mode.r#type, pb::ParameterType::String as i32);
        assert_eq!(mode.value, Some(v(Value::S("eco".into()))));
        assert_eq!(mode.description, "d");
        assert_eq!(
            mode.value_conditions[0].operand,
            Some(pb::ConditionOperand {
                operand: Some(Operand::Strings(pb::StringList {
                    values: vec!["eco".into(), "max".into()]
                }))
            })
        );

        let n = &params[2];
        assert_eq!(
            n.default_value,
            Some(v(Value::Ul("18446744073709551615".into())))
        );
        assert_eq!(
            n.value_conditions[0].comparison_operator,
            pb::ComparisonOperator::LessThan as i32
        );
        assert_eq!(
            n.value_conditions[0].operand,
            Some(pb::ConditionOperand {
                operand: Some(Operand::Number("100".into()))
            })
        );
        assert_eq!(
            n.value_conditions[1].operand,
            Some(pb::ConditionOperand {
                operand: Some(Operand::Numbers(pb::StringList {
                    values: vec!["1".into(), "2.5".into()]
                }))
            })
        );
        assert_eq!(params[3].default_value, Some(v(Value::Bin(vec![0, 1, 2]))));
        assert_eq!(params[4].r#type, pb::ParameterType::Unspecified as i32);
        assert_eq!(params[4].default_value, Some(v(Value::D(1.0))));
        assert_eq!(parse_parameters_json("[]").unwrap(), vec![]);
    }

    #[test]
    fn parameters_json_errors_name_the_place() {
        let cases = [
            ("[{\"name\":", "parameters: invalid JSON"),
            (
                "{\"name\":\"a\"}",
                "expected a JSON array of parameter objects, got an object",
            ),
            ("[3]", "parameters[0]: expected an object, got a number"),
            ("[{}]", "parameters[0]: missing required field \"name\""),
            (
                "[{\"name\":5}]",
                "parameters[0].name: expected a string, got 5",
            ),
            (
                "[{\"name\":\"a\",\"defaultvalue\":{\"i\":1}}]",
                "parameters[0]: unknown field \"defaultvalue\"; expected one of name, type",
            ),
            (
                "[{\"name\":\"a\",\"type\":\"INT\"}]",
                "parameters[0].type: unknown type \"INT\"",
            ),
            (
                "[{\"name\":\"a\",\"defaultValue\":{\"i\":\"20\"}}]",
                "parameters[0].defaultValue.i: expected a 32-bit integer, got \"20\"",
            ),
            (
                "[{\"name\":\"a\",\"defaultValue\":{\"i\":3000000000}}]",
                "parameters[0].defaultValue.i: expected a 32-bit integer, got 3000000000",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"i\":1,\"l\":2}}]",
                "parameters[0].value: exactly one of s, b, i, l, d, bin, ul must be set, found i, l",
            ),
            (
                "[{\"name\":\"a\",\"value\":{}}]",
                "parameters[0].value: exactly one of s, b, i, l, d, bin, ul must be set, found none",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"x\":1}}]",
                "parameters[0].value: unknown member \"x\"",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"b\":1}}]",
                "parameters[0].value.b: expected true or false",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"bin\":\"%%\"}}]",
                "parameters[0].value.bin: expected standard base64",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"ul\":-1}}]",
                "parameters[0].value.ul: expected an unsigned 64-bit integer",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"ul\":true}}]",
                "parameters[0].value.ul: expected an unsigned 64-bit integer",
            ),
            (
                "[{\"name\":\"a\",\"value\":{\"l\":1.5}}]",
                "parameters[0].value.l: expected a 64-bit integer",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":{}}]",
                "parameters[0].valueConditions: expected an array",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"operand\":{\"number\":\"1\"}}]}]",
                "parameters[0].valueConditions[0]: missing required field \"comparisonOperator\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"BETWEEN\",\"operand\":{\"number\":\"1\"}}]}]",
                "parameters[0].valueConditions[0].comparisonOperator: unknown operator \"BETWEEN\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"EQUALS\"}]}]",
                "parameters[0].valueConditions[0]: missing required field \"operand\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"EQUALS\",\"operand\":{\"number\":\"ten\"}}]}]",
                "parameters[0].valueConditions[0].operand.number: expected a number, got \"ten\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"IN_SET\",\"operand\":{\"numbers\":[1,\"x\"]}}]}]",
                "parameters[0].valueConditions[0].operand.numbers[1]: expected a number, got \"x\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"IN_RANGE\",\"operand\":{\"numberRange\":{\"min\":\"1\"}}}]}]",
                "parameters[0].valueConditions[0].operand.numberRange: missing required field \"max\"",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"IN_SET\",\"operand\":{\"strings\":[\"a\"],\"string\":\"b\"}}]}]",
                "parameters[0].valueConditions[0].operand: exactly one of number, numbers",
            ),
            (
                "[{\"name\":\"a\",\"valueConditions\":[{\"comparisonOperator\":\"IN_SET\",\"operand\":{\"set\":[]}}]}]",
                "parameters[0].valueConditions[0].operand: unknown member \"set\"",
            ),
            (
                "[{\"name\":\"a\",\"default_value\":{\"i\":1},\"defaultValue\":{\"i\":2}}]",
                "parameters[0]: field \"defaultValue\" is given twice",
            ),
        ];
        for (text, want) in cases {
            let err = parse_parameters_json(text).unwrap_err();
            assert!(err.contains(want), "{text}\n  got: {err}\n want: {want}");
        }
    }
}
