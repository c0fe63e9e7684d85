//! Payload templates (as devices see them rendered: `docs/device-protocol.md`, Requests):
//! typed parameters with defaults and value conditions, placeholders
//! `${aws:iot:commandexecution::parameter:<name>}` and
//! `${aws:iot:commandexecution::executionTimeoutSec}`, rendered to JSON or CBOR.
//!
//! Placeholders are recognised inside JSON strings (values and object keys) of the parsed
//! template. A string that is exactly one placeholder becomes the typed value; a placeholder
//! inside a longer string, or in a key, is replaced by the value's text form. Object members
//! keep the template's order in both output formats.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value as Cbor;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::command::check_text;
use crate::error::{ValidationError, ensure, key_path, quote, truncate};
use crate::limits::{
    CONDITION_OPERANDS_MAX, DESCRIPTION_MAX_CHARS, PARAMETER_NAME_MAX_CHARS, PARAMETERS_MAX,
    PAYLOAD_MAX_BYTES, TEMPLATE_MAX_CHARS,
};
use crate::model::{
    CommandParameter, ComparisonOperator, Operand, OutputFormat, ParameterType, ParameterValue,
    PayloadTemplate, ValueCondition,
};

pub const PARAMETER_PLACEHOLDER_PREFIX: &str = "${aws:iot:commandexecution::parameter:";
pub const TIMEOUT_PLACEHOLDER: &str = "${aws:iot:commandexecution::executionTimeoutSec}";

/// Every placeholder of the reserved namespace starts with this.
const NAMESPACE_PREFIX: &str = "${aws:iot:commandexecution::";
const TIMEOUT_NAME: &str = "executionTimeoutSec";
const PARAMETER_KIND: &str = "parameter:";
const TEMPLATE_FIELD: &str = "payload_template";

// ---------------------------------------------------------------------------------------
// Names used in messages
// ---------------------------------------------------------------------------------------

/// The API name of a parameter type (`STRING`, `UNSIGNEDLONG`, ...).
pub fn type_name(t: ParameterType) -> &'static str {
    match t {
        ParameterType::String => "STRING",
        ParameterType::Integer => "INTEGER",
        ParameterType::Double => "DOUBLE",
        ParameterType::Long => "LONG",
        ParameterType::UnsignedLong => "UNSIGNEDLONG",
        ParameterType::Boolean => "BOOLEAN",
        ParameterType::Binary => "BINARY",
    }
}

/// The API name of a comparison operator (`IN_RANGE`, ...).
pub fn operator_name(op: ComparisonOperator) -> &'static str {
    match op {
        ComparisonOperator::Equals => "EQUALS",
        ComparisonOperator::NotEquals => "NOT_EQUALS",
        ComparisonOperator::LessThan => "LESS_THAN",
        ComparisonOperator::LessThanEquals => "LESS_THAN_EQUALS",
        ComparisonOperator::GreaterThan => "GREATER_THAN",
        ComparisonOperator::GreaterThanEquals => "GREATER_THAN_EQUALS",
        ComparisonOperator::InSet => "IN_SET",
        ComparisonOperator::NotInSet => "NOT_IN_SET",
        ComparisonOperator::InRange => "IN_RANGE",
        ComparisonOperator::NotInRange => "NOT_IN_RANGE",
    }
}

/// An operand as messages show it; caller text is cut ([`truncate`], [`quote`]).
fn operand_text(operand: &Operand) -> String {
    match operand {
        Operand::Number(n) => truncate(n).into_owned(),
        Operand::Numbers(ns) => {
            let shown: Vec<_> = ns.iter().map(|n| truncate(n)).collect();
            format!("[{}]", shown.join(", "))
        }
        Operand::String(s) => quote(s),
        Operand::Strings(ss) => {
            let quoted: Vec<String> = ss.iter().map(|s| quote(s)).collect();
            format!("[{}]", quoted.join(", "))
        }
        Operand::NumberRange { min, max } => format!("[{}, {}]", truncate(min), truncate(max)),
    }
}

fn value_text(v: &ParameterValue) -> String {
    match v {
        ParameterValue::S(s) => quote(s),
        ParameterValue::Bin(b) => format!("<{} bytes>", b.len()),
        other => text_form(other),
    }
}

// ---------------------------------------------------------------------------------------
// Values and conditions
// ---------------------------------------------------------------------------------------

/// A number of one parameter type. Both sides of a comparison have the parameter's type, so
/// integers never meet floats; i128 holds every i32, i64 and u64 exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn cmp(self, other: Num) -> Ordering {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a.cmp(&b),
            (Num::Float(a), Num::Float(b)) => float_cmp(a, b),
            (Num::Int(a), Num::Float(b)) => float_cmp(a as f64, b),
            (Num::Float(a), Num::Int(b)) => float_cmp(a, b as f64),
        }
    }
}

/// IEEE order (so -0 equals 0); values are finite, the fallback only keeps this total.
fn float_cmp(a: f64, b: f64) -> Ordering {
    a.partial_cmp(&b).unwrap_or_else(|| a.total_cmp(&b))
}

/// Parses an operand number as the parameter's type (`None`: not a valid value of it).
fn parse_number(t: ParameterType, s: &str) -> Option<Num> {
    match t {
        ParameterType::Integer => s.parse::<i32>().ok().map(|v| Num::Int(v.into())),
        ParameterType::Long => s.parse::<i64>().ok().map(|v| Num::Int(v.into())),
        // The reference carries UL as a string of digits.
        ParameterType::UnsignedLong => (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
            .map(|v| Num::Int(v.into())),
        ParameterType::Double => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Num::Float),
        ParameterType::String | ParameterType::Boolean | ParameterType::Binary => None,
    }
}

fn number_of(v: &ParameterValue) -> Option<Num> {
    match v {
        ParameterValue::I(i) => Some(Num::Int((*i).into())),
        ParameterValue::L(l) => Some(Num::Int((*l).into())),
        ParameterValue::Ul(u) => Some(Num::Int((*u).into())),
        ParameterValue::D(d) => Some(Num::Float(*d)),
        ParameterValue::S(_) | ParameterValue::B(_) | ParameterValue::Bin(_) => None,
    }
}

/// A value given for (or declared on) a parameter of type `t`: the right type, non-empty
/// strings and binaries, finite doubles.
fn check_value(field: &str, t: ParameterType, v: &ParameterValue) -> Result<(), ValidationError> {
    let got = v.parameter_type();
    if got != t {
        return Err(ValidationError::new(
            field,
            format!(
                "expected a value of type {}, got {}",
                type_name(t),
                type_name(got)
            ),
        ));
    }
    match v {
        ParameterValue::S(s) if s.is_empty() => Err(ValidationError::new(
            field,
            "a STRING value must be at least 1 character",
        )),
        ParameterValue::Bin(b) if b.is_empty() => Err(ValidationError::new(
            field,
            "a BINARY value must be at least 1 byte",
        )),
        ParameterValue::D(d) if !d.is_finite() => Err(ValidationError::new(
            field,
            format!("a DOUBLE value must be finite, got {d}"),
        )),
        _ => Ok(()),
    }
}

const STRING_OPERATORS: &str = "EQUALS, NOT_EQUALS, IN_SET, NOT_IN_SET";

/// Checks that a condition is allowed for the type and that its operand is well formed.
/// `at` is the condition's field path; errors name `.operator` or `.operand`.
fn check_condition(at: &str, t: ParameterType, c: &ValueCondition) -> Result<(), ValidationError> {
    use ComparisonOperator::*;
    let op = operator_name(c.operator);
    let operand_field = format!("{at}.operand");
    let wrong_operand = |expected: &str| {
        ValidationError::new(
            operand_field.as_str(),
            format!(
                "{op} on a {} parameter takes {expected}, got {}",
                type_name(t),
                operand_kind(&c.operand)
            ),
        )
    };
    let check_count = |n: usize| {
        if n == 0 || n > CONDITION_OPERANDS_MAX {
            Err(ValidationError::new(
                operand_field.as_str(),
                format!("{op} takes 1–{CONDITION_OPERANDS_MAX} operands, got {n}"),
            ))
        } else {
            Ok(())
        }
    };
    let number = |s: &str| {
        parse_number(t, s).ok_or_else(|| {
            ValidationError::new(
                operand_field.as_str(),
                format!("{} is not a valid {} number", quote(s), type_name(t)),
            )
        })
    };
    match t {
        ParameterType::Boolean | ParameterType::Binary => Err(ValidationError::new(
            format!("{at}.operator"),
            format!("{} parameters take no value conditions", type_name(t)),
        )),
        ParameterType::String => match (c.operator, &c.operand) {
            (Equals | NotEquals, Operand::String(s)) => {
                if s.is_empty() {
                    return Err(ValidationError::new(
                        operand_field.as_str(),
                        "the string operand must be at least 1 character",
                    ));
                }
                Ok(())
            }
            (Equals | NotEquals, _) => Err(wrong_operand("a string")),
            (InSet | NotInSet, Operand::Strings(ss)) => {
                check_count(ss.len())?;
                if ss.iter().any(String::is_empty) {
                    return Err(ValidationError::new(
                        operand_field.as_str(),
                        "every string operand must be at least 1 character",
                    ));
                }
                Ok(())
            }
            (InSet | NotInSet, _) => Err(wrong_operand("strings")),
            _ => Err(ValidationError::new(
                format!("{at}.operator"),
                format!("{op} is not allowed on a STRING parameter (allowed: {STRING_OPERATORS})"),
            )),
        },
        ParameterType::Integer
        | ParameterType::Long
        | ParameterType::UnsignedLong
        | ParameterType::Double => match (c.operator, &c.operand) {
            (
                Equals | NotEquals | LessThan | LessThanEquals | GreaterThan | GreaterThanEquals,
                Operand::Number(n),
            ) => number(n).map(|_| ()),
            (
                Equals | NotEquals | LessThan | LessThanEquals | GreaterThan | GreaterThanEquals,
                _,
            ) => Err(wrong_operand("a number")),
            (InSet | NotInSet, Operand::Numbers(ns)) => {
                check_count(ns.len())?;
                ns.iter().try_for_each(|n| number(n).map(|_| ()))
            }
            (InSet | NotInSet, _) => Err(wrong_operand("numbers")),
            (InRange | NotInRange, Operand::NumberRange { min, max }) => {
                let (lo, hi) = (number(min)?, number(max)?);
                if lo.cmp(hi) == Ordering::Greater {
                    return Err(ValidationError::new(
                        operand_field.as_str(),
                        format!(
                            "the range minimum {} is greater than its maximum {}",
                            truncate(min),
                            truncate(max)
                        ),
                    ));
                }
                Ok(())
            }
            (InRange | NotInRange, _) => Err(wrong_operand("a number range {min, max}")),
        },
    }
}

fn operand_kind(o: &Operand) -> &'static str {
    match o {
        Operand::Number(_) => "a number",
        Operand::Numbers(_) => "numbers",
        Operand::String(_) => "a string",
        Operand::Strings(_) => "strings",
        Operand::NumberRange { .. } => "a number range",
    }
}

/// Whether `v` (already of the parameter's type) satisfies `c`. `Err` if the condition
/// itself is malformed, which [`validate_parameters`] rules out at create time.
fn satisfies(t: ParameterType, v: &ParameterValue, c: &ValueCondition) -> Result<bool, String> {
    use ComparisonOperator::*;
    let malformed = || {
        format!(
            "condition {} {} is malformed for a {} parameter",
            operator_name(c.operator),
            operand_text(&c.operand),
            type_name(t)
        )
    };
    if let ParameterValue::S(s) = v {
        return match (c.operator, &c.operand) {
            (Equals, Operand::String(o)) => Ok(s == o),
            (NotEquals, Operand::String(o)) => Ok(s != o),
            (InSet, Operand::Strings(os)) => Ok(os.contains(s)),
            (NotInSet, Operand::Strings(os)) => Ok(!os.contains(s)),
            _ => Err(malformed()),
        };
    }
    let value = number_of(v).ok_or_else(malformed)?;
    let num = |s: &str| parse_number(t, s).ok_or_else(malformed);
    let ord = |s: &str| num(s).map(|o| value.cmp(o));
    let in_set = |ns: &[String]| -> Result<bool, String> {
        let mut found = false;
        for n in ns {
            found |= value.cmp(num(n)?) == Ordering::Equal;
        }
        Ok(found)
    };
    let in_range = |min: &str, max: &str| -> Result<bool, String> {
        Ok(value.cmp(num(min)?) != Ordering::Less && value.cmp(num(max)?) != Ordering::Greater)
    };
    match (c.operator, &c.operand) {
        (Equals, Operand::Number(n)) => Ok(ord(n)? == Ordering::Equal),
        (NotEquals, Operand::Number(n)) => Ok(ord(n)? != Ordering::Equal),
        (LessThan, Operand::Number(n)) => Ok(ord(n)? == Ordering::Less),
        (LessThanEquals, Operand::Number(n)) => Ok(ord(n)? != Ordering::Greater),
        (GreaterThan, Operand::Number(n)) => Ok(ord(n)? == Ordering::Greater),
        (GreaterThanEquals, Operand::Number(n)) => Ok(ord(n)? != Ordering::Less),
        (InSet, Operand::Numbers(ns)) => in_set(ns),
        (NotInSet, Operand::Numbers(ns)) => in_set(ns).map(|found| !found),
        (InRange, Operand::NumberRange { min, max }) => in_range(min, max),
        (NotInRange, Operand::NumberRange { min, max }) => in_range(min, max).map(|r| !r),
        _ => Err(malformed()),
    }
}

/// Checks `v` against every condition of `p`; the error names the failing condition.
fn check_conditions(
    field: &str,
    p: &CommandParameter,
    v: &ParameterValue,
) -> Result<(), ValidationError> {
    for (j, c) in p.value_conditions.iter().enumerate() {
        match satisfies(p.r#type, v, c) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "parameter {}: value {} does not satisfy value_conditions[{j}]: {} {}",
                        quote(&p.name),
                        value_text(v),
                        operator_name(c.operator),
                        operand_text(&c.operand)
                    ),
                ));
            }
            Err(why) => {
                return Err(ValidationError::new(
                    field,
                    format!("parameter {}: {why}", quote(&p.name)),
                ));
            }
        }
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let len = name.chars().count();
    if len == 0 || len > PARAMETER_NAME_MAX_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be 1–{PARAMETER_NAME_MAX_CHARS} characters, got {len}"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '$' | '_' | '-')))
    {
        return Err(ValidationError::new(
            field,
            format!("must match ^[.$a-zA-Z0-9_-]+$, found {c:?}"),
        ));
    }
    Ok(())
}

/// Validates parameter definitions at create time: names (1–192, `^[.$a-zA-Z0-9_-]+$`,
/// unique), default and fixed values of the declared type, conditions allowed for the type
/// with 1–10 well-formed operands.
pub fn validate_parameters(parameters: &[CommandParameter]) -> Result<(), ValidationError> {
    let (count, max) = (parameters.len(), PARAMETERS_MAX);
    let message = || format!("at most {max} parameters, got {count}");
    ensure(count <= max, "mandatory_parameters", message)?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in parameters.iter().enumerate() {
        let at = format!("mandatory_parameters[{i}]");
        check_name(&format!("{at}.name"), &p.name)?;
        if let Some(first) = seen.insert(&p.name, i) {
            return Err(ValidationError::new(
                format!("{at}.name"),
                format!(
                    "duplicate parameter name {} (also mandatory_parameters[{first}])",
                    quote(&p.name)
                ),
            ));
        }
        check_text(
            &format!("{at}.description"),
            &p.description,
            DESCRIPTION_MAX_CHARS,
        )?;
        for (j, c) in p.value_conditions.iter().enumerate() {
            check_condition(&format!("{at}.value_conditions[{j}]"), p.r#type, c)?;
        }
        for (field, value) in [("default_value", &p.default_value), ("value", &p.value)] {
            if let Some(v) = value {
                let field = format!("{at}.{field}");
                check_value(&field, p.r#type, v)?;
                check_conditions(&field, p, v)?;
            }
        }
    }
    Ok(())
}

/// Resolves the values to use at start: the request's value, else the fixed `value`, else
/// `default_value`; unknown names, wrong types, missing values and failed conditions are
/// errors naming the parameter.
pub fn resolve(
    parameters: &[CommandParameter],
    given: &BTreeMap<String, ParameterValue>,
) -> Result<BTreeMap<String, ParameterValue>, ValidationError> {
    if let Some(unknown) = given
        .keys()
        .find(|name| !parameters.iter().any(|p| &p.name == *name))
    {
        return Err(ValidationError::new(
            key_path("parameters", unknown),
            format!(
                "the command declares no parameter {} ({})",
                quote(unknown),
                declared_list(parameters)
            ),
        ));
    }
    let mut resolved = BTreeMap::new();
    for p in parameters {
        let field = key_path("parameters", &p.name);
        let value = match (given.get(&p.name), &p.value, &p.default_value) {
            (Some(v), _, _) | (None, Some(v), _) | (None, None, Some(v)) => v,
            (None, None, None) => {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "parameter {} ({}) is required: no value was given and it has no default",
                        quote(&p.name),
                        type_name(p.r#type)
                    ),
                ));
            }
        };
        check_value(&field, p.r#type, value)?;
        check_conditions(&field, p, value)?;
        resolved.insert(p.name.clone(), value.clone());
    }
    Ok(resolved)
}

fn declared_list(parameters: &[CommandParameter]) -> String {
    const SHOWN: usize = 10;
    if parameters.is_empty() {
        return "it declares none".to_string();
    }
    let mut names: Vec<String> = parameters
        .iter()
        .take(SHOWN)
        .map(|p| truncate(&p.name).into_owned())
        .collect();
    if parameters.len() > SHOWN {
        names.push(format!("and {} more", parameters.len() - SHOWN));
    }
    format!("declared: {}", names.join(", "))
}

// ---------------------------------------------------------------------------------------
// Placeholders
// ---------------------------------------------------------------------------------------

/// A piece of a template string.
#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Parameter(&'a str),
    Timeout,
}

/// Splits a string into text and placeholders. Text outside the reserved
/// `${aws:iot:commandexecution::` namespace is left alone (`${other}` is literal text).
fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find(NAMESPACE_PREFIX) {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let after = &rest[start + NAMESPACE_PREFIX.len()..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unterminated placeholder {}: missing '}}'",
                quote(&rest[start..])
            ));
        };
        let inner = &after[..end];
        if inner == TIMEOUT_NAME {
            out.push(Piece::Timeout);
        } else if let Some(name) = inner.strip_prefix(PARAMETER_KIND) {
            out.push(Piece::Parameter(name));
        } else {
            return Err(format!(
                "unknown placeholder {}: expected {PARAMETER_PLACEHOLDER_PREFIX}<name>}} or {TIMEOUT_PLACEHOLDER}",
                quote(&format!("{NAMESPACE_PREFIX}{inner}}}"))
            ));
        }
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// The template tree
// ---------------------------------------------------------------------------------------

/// A JSON document whose objects keep their members in order (serde_json's `Value` sorts
/// them without the `preserve_order` feature), plus byte strings for rendered BINARY values.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    /// Only in rendered output: base64 text in JSON, a byte string in CBOR.
    Bytes(Vec<u8>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                Ok(Node::U64(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
                Ok(Node::I64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
                Ok(Node::F64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut members: Vec<(String, Node)> = Vec::new();
                // A set beside the ordered list keeps big objects linear-ish, not quadratic.
                let mut seen = BTreeSet::new();
                while let Some((k, v)) = map.next_entry::<String, Node>()? {
                    if !seen.insert(k.clone()) {
                        return Err(de::Error::custom(format!(
                            "duplicate object key {}",
                            quote(&k)
                        )));
                    }
                    members.push((k, v));
                }
                Ok(Node::Object(members))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::U64(u) => s.serialize_u64(*u),
            Node::I64(i) => s.serialize_i64(*i),
            Node::F64(f) => s.serialize_f64(*f),
            Node::Str(t) => s.serialize_str(t),
            Node::Bytes(b) => s.serialize_str(&STANDARD.encode(b)),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl Node {
    fn into_cbor(self) -> Cbor {
        match self {
            Node::Null => Cbor::Null,
            Node::Bool(b) => Cbor::Bool(b),
            Node::U64(u) => Cbor::Integer(u.into()),
            Node::I64(i) => Cbor::Integer(i.into()),
            Node::F64(f) => Cbor::Float(f),
            Node::Str(t) => Cbor::Text(t),
            Node::Bytes(b) => Cbor::Bytes(b),
            Node::Array(items) => Cbor::Array(items.into_iter().map(Node::into_cbor).collect()),
            Node::Object(members) => Cbor::Map(
                members
                    .into_iter()
                    .map(|(k, v)| (Cbor::Text(k), v.into_cbor()))
                    .collect(),
            ),
        }
    }

    /// Every string of the tree, keys included, in document order.
    fn visit_strings<'a>(
        &'a self,
        f: &mut impl FnMut(&'a str) -> Result<(), String>,
    ) -> Result<(), String> {
        match self {
            Node::Str(s) => f(s),
            Node::Array(items) => items.iter().try_for_each(|i| i.visit_strings(f)),
            Node::Object(members) => members.iter().try_for_each(|(k, v)| {
                f(k)?;
                v.visit_strings(f)
            }),
            _ => Ok(()),
        }
    }
}

fn parse_template(template: &str) -> Result<Node, ValidationError> {
    serde_json::from_str::<Node>(template)
        .map_err(|e| ValidationError::new(TEMPLATE_FIELD, format!("must be valid JSON: {e}")))
}

/// Validates a template at create time: at most 32,768 chars, valid JSON, at least one
/// placeholder, every parameter placeholder names a declared parameter, no unknown
/// `${aws:iot:commandexecution::...}` placeholder.
pub fn validate_template(
    template: &str,
    parameters: &[CommandParameter],
) -> Result<(), ValidationError> {
    let chars = template.chars().count();
    if chars > TEMPLATE_MAX_CHARS {
        return Err(ValidationError::new(
            TEMPLATE_FIELD,
            format!("must be at most {TEMPLATE_MAX_CHARS} characters, got {chars}"),
        ));
    }
    let tree = parse_template(template)?;
    let mut placeholders = 0usize;
    tree.visit_strings(&mut |s| {
        for piece in pieces(s)? {
            match piece {
                Piece::Text(_) => {}
                Piece::Timeout => placeholders += 1,
                Piece::Parameter(name) => {
                    if !parameters.iter().any(|p| p.name == name) {
                        return Err(format!(
                            "placeholder {PARAMETER_PLACEHOLDER_PREFIX}{}}} names no declared parameter ({})",
                            truncate(name),
                            declared_list(parameters)
                        ));
                    }
                    placeholders += 1;
                }
            }
        }
        Ok(())
    })
    .map_err(|why| ValidationError::new(TEMPLATE_FIELD, why))?;
    if placeholders == 0 {
        return Err(ValidationError::new(
            TEMPLATE_FIELD,
            format!(
                "must contain at least one placeholder, such as {PARAMETER_PLACEHOLDER_PREFIX}<name>}} or {TIMEOUT_PLACEHOLDER}"
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

/// The text form of a value, for placeholders inside longer strings and keys.
fn text_form(v: &ParameterValue) -> String {
    match v {
        ParameterValue::S(s) => s.clone(),
        ParameterValue::B(b) => b.to_string(),
        ParameterValue::I(i) => i.to_string(),
        ParameterValue::L(l) => l.to_string(),
        ParameterValue::Ul(u) => u.to_string(),
        // As serde_json writes it (`1.0`, `1e21`), so text and typed forms agree.
        ParameterValue::D(d) => serde_json::Number::from_f64(*d)
            .map(|n| n.to_string())
            .unwrap_or_else(|| d.to_string()),
        ParameterValue::Bin(b) => STANDARD.encode(b),
    }
}

fn typed(v: &ParameterValue) -> Node {
    match v {
        ParameterValue::S(s) => Node::Str(s.clone()),
        ParameterValue::B(b) => Node::Bool(*b),
        ParameterValue::I(i) => Node::I64((*i).into()),
        ParameterValue::L(l) => Node::I64(*l),
        ParameterValue::Ul(u) => Node::U64(*u),
        ParameterValue::D(d) => Node::F64(*d),
        ParameterValue::Bin(b) => Node::Bytes(b.clone()),
    }
}

struct Renderer<'a> {
    values: &'a BTreeMap<String, ParameterValue>,
    timeout_secs: u64,
}

impl Renderer<'_> {
    fn value(&self, name: &str) -> Result<&ParameterValue, ValidationError> {
        let v = self.values.get(name).ok_or_else(|| {
            ValidationError::new(
                key_path("parameters", name),
                "the template uses this parameter but no value was resolved for it",
            )
        })?;
        if let ParameterValue::D(d) = v
            && !d.is_finite()
        {
            return Err(ValidationError::new(
                key_path("parameters", name),
                format!("a DOUBLE value must be finite, got {d}"),
            ));
        }
        Ok(v)
    }

    fn text(&self, s: &str) -> Result<String, ValidationError> {
        let mut out = String::with_capacity(s.len());
        for piece in pieces(s).map_err(|why| ValidationError::new(TEMPLATE_FIELD, why))? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Timeout => out.push_str(&self.timeout_secs.to_string()),
                Piece::Parameter(name) => out.push_str(&text_form(self.value(name)?)),
            }
        }
        Ok(out)
    }

    fn string(&self, s: &str) -> Result<Node, ValidationError> {
        let parts = pieces(s).map_err(|why| ValidationError::new(TEMPLATE_FIELD, why))?;
        match parts.as_slice() {
            [Piece::Parameter(name)] => Ok(typed(self.value(name)?)),
            [Piece::Timeout] => Ok(Node::U64(self.timeout_secs)),
            _ => self.text(s).map(Node::Str),
        }
    }

    fn node(&self, n: Node) -> Result<Node, ValidationError> {
        Ok(match n {
            Node::Str(s) => self.string(&s)?,
            Node::Array(items) => Node::Array(
                items
                    .into_iter()
                    .map(|i| self.node(i))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Object(members) => {
                let mut out: Vec<(String, Node)> = Vec::with_capacity(members.len());
                let mut seen = BTreeSet::new();
                for (k, v) in members {
                    let k = self.text(&k)?;
                    if !seen.insert(k.clone()) {
                        return Err(ValidationError::new(
                            "parameters",
                            format!(
                                "the rendered payload would have the object key {} twice",
                                quote(&k)
                            ),
                        ));
                    }
                    out.push((k, self.node(v)?));
                }
                Node::Object(out)
            }
            other => other,
        })
    }
}

/// Renders the template with resolved values into the output format's bytes.
///
/// The rendered payload is held to the static payload limit (32 KB), so a long STRING or
/// BINARY value is refused at start rather than producing an oversized request.
pub fn render(
    template: &PayloadTemplate,
    values: &BTreeMap<String, ParameterValue>,
    timeout_secs: u64,
) -> Result<Vec<u8>, ValidationError> {
    let tree = parse_template(&template.template)?;
    let rendered = Renderer {
        values,
        timeout_secs,
    }
    .node(tree)?;
    let bytes = match template.output_format {
        OutputFormat::Json => serde_json::to_vec(&rendered).map_err(|e| {
            ValidationError::new(TEMPLATE_FIELD, format!("cannot encode as JSON: {e}"))
        })?,
        OutputFormat::Cbor => {
            let mut out = Vec::new();
            ciborium::ser::into_writer(&rendered.into_cbor(), &mut out).map_err(|e| {
                ValidationError::new(TEMPLATE_FIELD, format!("cannot encode as CBOR: {e}"))
            })?;
            out
        }
    };
    let (size, max) = (bytes.len(), PAYLOAD_MAX_BYTES);
    let message =
        || format!("the rendered payload is {size} bytes, more than the {max}-byte limit");
    ensure(size <= max, "parameters", message)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
