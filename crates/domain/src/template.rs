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
use crate::error::{ValidationError, key_path, quote, truncate};
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
    if parameters.len() > PARAMETERS_MAX {
        return Err(ValidationError::new(
            "mandatory_parameters",
            format!(
                "at most {PARAMETERS_MAX} parameters, got {}",
                parameters.len()
            ),
        ));
    }
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
    if bytes.len() > PAYLOAD_MAX_BYTES {
        return Err(ValidationError::new(
            "parameters",
            format!(
                "the rendered payload is {} bytes, more than the {PAYLOAD_MAX_BYTES}-byte limit",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ComparisonOperator::*;
    use ParameterType as T;
    use ParameterValue as V;
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    fn param(name: &str, t: ParameterType) -> CommandParameter {
        CommandParameter {
            name: name.into(),
            r#type: t,
            default_value: None,
            value: None,
            value_conditions: vec![],
            description: String::new(),
        }
    }

    fn with_conditions(mut p: CommandParameter, cs: Vec<ValueCondition>) -> CommandParameter {
        p.value_conditions = cs;
        p
    }

    fn cond(operator: ComparisonOperator, operand: Operand) -> ValueCondition {
        ValueCondition { operator, operand }
    }

    fn num(s: &str) -> Operand {
        Operand::Number(s.into())
    }

    fn nums(xs: &[&str]) -> Operand {
        Operand::Numbers(xs.iter().map(|x| x.to_string()).collect())
    }

    fn strs(xs: &[&str]) -> Operand {
        Operand::Strings(xs.iter().map(|x| x.to_string()).collect())
    }

    fn range(min: &str, max: &str) -> Operand {
        Operand::NumberRange {
            min: min.into(),
            max: max.into(),
        }
    }

    fn given(entries: &[(&str, ParameterValue)]) -> BTreeMap<String, ParameterValue> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn ph(name: &str) -> String {
        format!("{PARAMETER_PLACEHOLDER_PREFIX}{name}}}")
    }

    /// Asserts an error on `field` whose message contains every needle.
    fn assert_err<T: fmt::Debug>(r: Result<T, ValidationError>, field: &str, needles: &[&str]) {
        let err = r.unwrap_err();
        assert_eq!(err.field, field, "{err:?}");
        for n in needles {
            assert!(err.message.contains(n), "{:?} lacks {n:?}", err.message);
        }
    }

    /// A value of type `t` for a small integer `n` (for tables shared by every numeric type).
    fn of(t: ParameterType, n: i64) -> ParameterValue {
        match t {
            T::Integer => V::I(n as i32),
            T::Long => V::L(n),
            T::UnsignedLong => V::Ul(n as u64),
            T::Double => V::D(n as f64),
            _ => unreachable!(),
        }
    }

    const NUMERIC: [ParameterType; 4] = [T::Integer, T::Long, T::UnsignedLong, T::Double];

    // --- validate_parameters -----------------------------------------------------------

    #[test]
    fn parameter_names_and_count() {
        assert_eq!(validate_parameters(&[]), Ok(()));
        assert_eq!(
            validate_parameters(&[
                param("a.b$c_d-9", T::String),
                param(&"n".repeat(192), T::Boolean)
            ]),
            Ok(())
        );
        assert_err(
            validate_parameters(&[param(&"n".repeat(193), T::String)]),
            "mandatory_parameters[0].name",
            &["1–192", "193"],
        );
        assert_err(
            validate_parameters(&[param("", T::String)]),
            "mandatory_parameters[0].name",
            &["1–192"],
        );
        assert_err(
            validate_parameters(&[param("ok", T::String), param("a b", T::String)]),
            "mandatory_parameters[1].name",
            &["^[.$a-zA-Z0-9_-]+$", "' '"],
        );
        assert_err(
            validate_parameters(&[param("a}", T::String)]),
            "mandatory_parameters[0].name",
            &["'}'"],
        );
        assert_err(
            validate_parameters(&[
                param("x", T::String),
                param("y", T::Long),
                param("x", T::Long),
            ]),
            "mandatory_parameters[2].name",
            &["duplicate", "mandatory_parameters[0]"],
        );
        let many: Vec<_> = (0..PARAMETERS_MAX)
            .map(|i| param(&format!("p{i}"), T::Boolean))
            .collect();
        assert_eq!(validate_parameters(&many), Ok(()));
        let too_many: Vec<_> = (0..=PARAMETERS_MAX)
            .map(|i| param(&format!("p{i}"), T::Boolean))
            .collect();
        assert_err(
            validate_parameters(&too_many),
            "mandatory_parameters",
            &["100", "101"],
        );
    }

    #[test]
    fn descriptions_and_declared_values() {
        let mut p = param("p", T::String);
        p.description = "d".repeat(2028);
        assert_eq!(validate_parameters(&[p.clone()]), Ok(()));
        p.description.push('d');
        assert_err(
            validate_parameters(&[p.clone()]),
            "mandatory_parameters[0].description",
            &["2028"],
        );
        p.description = "tab\there".into();
        assert_err(
            validate_parameters(&[p]),
            "mandatory_parameters[0].description",
            &["control"],
        );

        let mut p = param("p", T::Integer);
        p.default_value = Some(V::L(3));
        assert_err(
            validate_parameters(&[p.clone()]),
            "mandatory_parameters[0].default_value",
            &["INTEGER", "LONG"],
        );
        p.default_value = Some(V::I(3));
        p.value = Some(V::S("3".into()));
        assert_err(
            validate_parameters(&[p.clone()]),
            "mandatory_parameters[0].value",
            &["INTEGER", "STRING"],
        );
        p.value = Some(V::I(4));
        assert_eq!(validate_parameters(&[p]), Ok(()));

        let mut s = param("s", T::String);
        s.default_value = Some(V::S(String::new()));
        assert_err(
            validate_parameters(&[s]),
            "mandatory_parameters[0].default_value",
            &["at least 1 character"],
        );
        let mut b = param("b", T::Binary);
        b.value = Some(V::Bin(vec![]));
        assert_err(
            validate_parameters(&[b.clone()]),
            "mandatory_parameters[0].value",
            &["at least 1 byte"],
        );
        b.value = Some(V::Bin(vec![0]));
        assert_eq!(validate_parameters(&[b]), Ok(()));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut d = param("d", T::Double);
            d.default_value = Some(V::D(bad));
            assert_err(
                validate_parameters(&[d]),
                "mandatory_parameters[0].default_value",
                &["finite"],
            );
        }
        let mut u = param("u", T::UnsignedLong);
        u.default_value = Some(V::Ul(u64::MAX));
        assert_eq!(validate_parameters(&[u]), Ok(()));
    }

    #[test]
    fn boolean_and_binary_take_no_conditions() {
        for t in [T::Boolean, T::Binary] {
            let p = with_conditions(param("p", t), vec![cond(Equals, num("1"))]);
            assert_err(
                validate_parameters(&[p]),
                "mandatory_parameters[0].value_conditions[0].operator",
                &[type_name(t), "no value conditions"],
            );
        }
    }

    #[test]
    fn string_conditions() {
        let ok = [
            cond(Equals, Operand::String("a".into())),
            cond(NotEquals, Operand::String("a".into())),
            cond(InSet, strs(&["a", "b"])),
            cond(NotInSet, strs(&["c"; 10])),
        ];
        assert_eq!(
            validate_parameters(&[with_conditions(param("s", T::String), ok.to_vec())]),
            Ok(())
        );
        let field = "mandatory_parameters[0].value_conditions[0]";
        let check = |c: ValueCondition| {
            validate_parameters(&[with_conditions(param("s", T::String), vec![c])])
        };
        for op in [
            LessThan,
            LessThanEquals,
            GreaterThan,
            GreaterThanEquals,
            InRange,
            NotInRange,
        ] {
            assert_err(
                check(cond(op, num("1"))),
                &format!("{field}.operator"),
                &[
                    operator_name(op),
                    "STRING",
                    "EQUALS, NOT_EQUALS, IN_SET, NOT_IN_SET",
                ],
            );
        }
        assert_err(
            check(cond(Equals, num("1"))),
            &format!("{field}.operand"),
            &["EQUALS", "a string", "got a number"],
        );
        assert_err(
            check(cond(InSet, Operand::String("a".into()))),
            &format!("{field}.operand"),
            &["strings"],
        );
        assert_err(
            check(cond(InSet, strs(&[]))),
            &format!("{field}.operand"),
            &["1–10", "got 0"],
        );
        assert_err(
            check(cond(NotInSet, strs(&["x"; 11]))),
            &format!("{field}.operand"),
            &["1–10", "got 11"],
        );
        assert_err(
            check(cond(Equals, Operand::String(String::new()))),
            &format!("{field}.operand"),
            &["at least 1"],
        );
        assert_err(
            check(cond(InSet, strs(&["a", ""]))),
            &format!("{field}.operand"),
            &["at least 1"],
        );
    }

    #[test]
    fn numeric_types_allow_every_operator_with_the_right_operand() {
        let all = vec![
            cond(Equals, num("1")),
            cond(NotEquals, num("2")),
            cond(LessThan, num("100")),
            cond(LessThanEquals, num("100")),
            cond(GreaterThan, num("0")),
            cond(GreaterThanEquals, num("0")),
            cond(InSet, nums(&["1", "2", "3"])),
            cond(NotInSet, nums(&["5"; 10])),
            cond(InRange, range("1", "1")),
            cond(NotInRange, range("50", "60")),
        ];
        for t in NUMERIC {
            let p = with_conditions(param("n", t), all.clone());
            assert_eq!(
                validate_parameters(std::slice::from_ref(&p)),
                Ok(()),
                "{t:?}"
            );
            let field = "mandatory_parameters[0].value_conditions[0].operand";
            let check =
                |c: ValueCondition| validate_parameters(&[with_conditions(param("n", t), vec![c])]);
            assert_err(
                check(cond(LessThan, nums(&["1"]))),
                field,
                &["LESS_THAN", "a number", "got numbers"],
            );
            assert_err(check(cond(InSet, num("1"))), field, &["IN_SET", "numbers"]);
            assert_err(
                check(cond(InRange, num("1"))),
                field,
                &["IN_RANGE", "range"],
            );
            assert_err(
                check(cond(Equals, Operand::String("1".into()))),
                field,
                &["a number", "got a string"],
            );
            assert_err(check(cond(InSet, nums(&[]))), field, &["1–10"]);
            assert_err(
                check(cond(NotInSet, nums(&["1"; 11]))),
                field,
                &["1–10", "11"],
            );
            assert_err(
                check(cond(InRange, range("2", "1"))),
                field,
                &["minimum 2", "maximum 1"],
            );
            assert_err(
                check(cond(Equals, num("abc"))),
                field,
                &["\"abc\"", type_name(t)],
            );
            assert_err(check(cond(InSet, nums(&["1", " 2"]))), field, &["\" 2\""]);
            assert_err(check(cond(NotInRange, range("1", "x"))), field, &["\"x\""]);
        }
    }

    #[test]
    fn operand_numbers_must_parse_as_the_parameter_type() {
        let accepts = |t: ParameterType, n: &str| {
            validate_parameters(&[with_conditions(param("n", t), vec![cond(Equals, num(n))])])
                .is_ok()
        };
        assert!(accepts(T::Integer, "2147483647") && accepts(T::Integer, "-2147483648"));
        assert!(!accepts(T::Integer, "2147483648") && !accepts(T::Integer, "1.5"));
        assert!(
            accepts(T::Long, "9223372036854775807") && accepts(T::Long, "-9223372036854775808")
        );
        assert!(!accepts(T::Long, "9223372036854775808") && !accepts(T::Long, "1e3"));
        assert!(accepts(T::UnsignedLong, "18446744073709551615") && accepts(T::UnsignedLong, "0"));
        assert!(!accepts(T::UnsignedLong, "18446744073709551616"));
        assert!(!accepts(T::UnsignedLong, "-1") && !accepts(T::UnsignedLong, "+1"));
        assert!(
            accepts(T::Double, "1e3") && accepts(T::Double, "-0.25") && accepts(T::Double, "7")
        );
        assert!(
            !accepts(T::Double, "NaN")
                && !accepts(T::Double, "inf")
                && !accepts(T::Double, "1e999")
        );
        assert!(!accepts(T::Integer, "") && !accepts(T::Double, ""));
    }

    #[test]
    fn defaults_and_fixed_values_must_satisfy_the_conditions() {
        let mut p = with_conditions(
            param("pct", T::Integer),
            vec![cond(InRange, range("1", "10"))],
        );
        p.default_value = Some(V::I(10));
        assert_eq!(validate_parameters(std::slice::from_ref(&p)), Ok(()));
        p.default_value = Some(V::I(11));
        assert_err(
            validate_parameters(std::slice::from_ref(&p)),
            "mandatory_parameters[0].default_value",
            &["\"pct\"", "11", "IN_RANGE", "[1, 10]"],
        );
        p.default_value = None;
        p.value = Some(V::I(0));
        assert_err(
            validate_parameters(&[p]),
            "mandatory_parameters[0].value",
            &["0", "IN_RANGE"],
        );
        let mut s = with_conditions(
            param("mode", T::String),
            vec![cond(InSet, strs(&["fast", "safe"]))],
        );
        s.default_value = Some(V::S("slow".into()));
        assert_err(
            validate_parameters(&[s]),
            "mandatory_parameters[0].default_value",
            &["\"slow\"", "IN_SET", "[\"fast\", \"safe\"]"],
        );
    }

    // --- condition semantics through resolve ---------------------------------------------

    fn passes(t: ParameterType, c: ValueCondition, v: ParameterValue) -> bool {
        let p = with_conditions(param("n", t), vec![c]);
        resolve(&[p], &given(&[("n", v)])).is_ok()
    }

    #[test]
    fn every_numeric_operator_with_inclusive_bounds() {
        // (operator, operand, value, expected)
        let table: Vec<(ComparisonOperator, Operand, i64, bool)> = vec![
            (Equals, num("5"), 5, true),
            (Equals, num("5"), 4, false),
            (NotEquals, num("5"), 4, true),
            (NotEquals, num("5"), 5, false),
            (LessThan, num("5"), 4, true),
            (LessThan, num("5"), 5, false),
            (LessThanEquals, num("5"), 5, true),
            (LessThanEquals, num("5"), 6, false),
            (GreaterThan, num("5"), 6, true),
            (GreaterThan, num("5"), 5, false),
            (GreaterThanEquals, num("5"), 5, true),
            (GreaterThanEquals, num("5"), 4, false),
            (InSet, nums(&["1", "3"]), 3, true),
            (InSet, nums(&["1", "3"]), 2, false),
            (NotInSet, nums(&["1", "3"]), 2, true),
            (NotInSet, nums(&["1", "3"]), 1, false),
            (InRange, range("1", "10"), 0, false),
            (InRange, range("1", "10"), 1, true),
            (InRange, range("1", "10"), 10, true),
            (InRange, range("1", "10"), 11, false),
            (NotInRange, range("1", "10"), 0, true),
            (NotInRange, range("1", "10"), 1, false),
            (NotInRange, range("1", "10"), 10, false),
            (NotInRange, range("1", "10"), 11, true),
            (InRange, range("7", "7"), 7, true),
        ];
        for t in NUMERIC {
            for (op, operand, v, expected) in &table {
                assert_eq!(
                    passes(t, cond(*op, operand.clone()), of(t, *v)),
                    *expected,
                    "{t:?} {} {} with {v}",
                    operator_name(*op),
                    operand_text(operand)
                );
            }
        }
    }

    #[test]
    fn extremes_and_fractions_compare_exactly() {
        assert!(passes(
            T::UnsignedLong,
            cond(GreaterThan, num("9223372036854775807")),
            V::Ul(u64::MAX)
        ));
        assert!(!passes(
            T::UnsignedLong,
            cond(LessThan, num("18446744073709551615")),
            V::Ul(u64::MAX)
        ));
        assert!(passes(
            T::Long,
            cond(LessThan, num("-9223372036854775807")),
            V::L(i64::MIN)
        ));
        assert!(passes(
            T::Integer,
            cond(InRange, range("-2147483648", "2147483647")),
            V::I(i32::MIN)
        ));
        assert!(passes(
            T::Double,
            cond(InRange, range("0.1", "0.9")),
            V::D(0.1)
        ));
        assert!(!passes(
            T::Double,
            cond(InRange, range("0.1", "0.9")),
            V::D(0.0999)
        ));
        assert!(passes(T::Double, cond(LessThan, num("1e-3")), V::D(0.0009)));
        assert!(passes(
            T::Double,
            cond(InSet, nums(&["0.5", "1.5"])),
            V::D(1.5)
        ));
        assert!(
            passes(T::Double, cond(Equals, num("0")), V::D(-0.0)),
            "-0 equals 0 as in IEEE 754"
        );
        assert!(passes(
            T::Double,
            cond(InRange, range("0", "1")),
            V::D(-0.0)
        ));
        assert!(!passes(T::Double, cond(GreaterThan, num("2.5")), V::D(2.5)));
    }

    #[test]
    fn every_string_operator() {
        let s = |x: &str| V::S(x.into());
        assert!(passes(
            T::String,
            cond(Equals, Operand::String("on".into())),
            s("on")
        ));
        assert!(
            !passes(
                T::String,
                cond(Equals, Operand::String("on".into())),
                s("ON")
            ),
            "case-sensitive"
        );
        assert!(passes(
            T::String,
            cond(NotEquals, Operand::String("on".into())),
            s("off")
        ));
        assert!(!passes(
            T::String,
            cond(NotEquals, Operand::String("on".into())),
            s("on")
        ));
        assert!(passes(T::String, cond(InSet, strs(&["a", "b"])), s("b")));
        assert!(!passes(T::String, cond(InSet, strs(&["a", "b"])), s("c")));
        assert!(passes(T::String, cond(NotInSet, strs(&["a", "b"])), s("c")));
        assert!(!passes(
            T::String,
            cond(NotInSet, strs(&["a", "b"])),
            s("a")
        ));
    }

    // --- resolve ----------------------------------------------------------------------

    #[test]
    fn huge_names_and_values_are_quoted_cut() {
        let huge = "z".repeat(100_000);
        let mut p = with_conditions(
            param("s", T::String),
            vec![cond(Equals, Operand::String(huge.clone()))],
        );
        p.default_value = Some(V::S("y".repeat(100_000)));
        // A default that fails its condition: both sides are quoted cut.
        let e = validate_parameters(&[p.clone()]).unwrap_err();
        assert_eq!(e.field, "mandatory_parameters[0].default_value");
        assert!(e.message.contains("(100000 characters)"), "{}", e.message);
        assert!(e.message.len() < 400, "{}", e.message.len());
        // An undeclared parameter at start: the field path and the message.
        p.default_value = None;
        let e = resolve(&[p], &given(&[(huge.as_str(), V::S("v".into()))])).unwrap_err();
        assert_eq!(e.field, format!("parameters[\"{}…\"]", "z".repeat(64)));
        assert!(e.message.len() < 400, "{}", e.message.len());
        // A bad operand number.
        let e = validate_parameters(&[with_conditions(
            param("n", T::Integer),
            vec![cond(LessThan, num(&huge))],
        )])
        .unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
        // A template with a huge unknown placeholder.
        let e = validate_template(&json!({ "a": ph(&huge) }).to_string(), &[]).unwrap_err();
        assert!(e.message.len() < 300, "{}", e.message.len());
    }

    #[test]
    fn resolve_precedence_and_errors() {
        let mut level = with_conditions(
            param("level", T::Integer),
            vec![cond(InRange, range("1", "5"))],
        );
        level.default_value = Some(V::I(1));
        let mut mode = param("mode", T::String);
        mode.value = Some(V::S("fixed".into()));
        mode.default_value = Some(V::S("default".into()));
        let name = param("name", T::String);
        let params = vec![level, mode, name];

        let r = resolve(&params, &given(&[("name", V::S("n".into()))])).unwrap();
        assert_eq!(
            r,
            given(&[
                ("level", V::I(1)),
                ("mode", V::S("fixed".into())),
                ("name", V::S("n".into()))
            ])
        );
        let r = resolve(
            &params,
            &given(&[
                ("name", V::S("n".into())),
                ("level", V::I(5)),
                ("mode", V::S("asked".into())),
            ]),
        )
        .unwrap();
        assert_eq!(r["level"], V::I(5));
        assert_eq!(
            r["mode"],
            V::S("asked".into()),
            "the request's value comes first"
        );

        assert_err(
            resolve(&params, &given(&[])),
            "parameters[\"name\"]",
            &["\"name\"", "STRING", "required"],
        );
        assert_err(
            resolve(
                &params,
                &given(&[("name", V::S("n".into())), ("nme", V::S("x".into()))]),
            ),
            "parameters[\"nme\"]",
            &["no parameter \"nme\"", "level, mode, name"],
        );
        assert_err(
            resolve(
                &params,
                &given(&[("name", V::S("n".into())), ("level", V::L(2))]),
            ),
            "parameters[\"level\"]",
            &["INTEGER", "got LONG"],
        );
        assert_err(
            resolve(
                &params,
                &given(&[("name", V::S("n".into())), ("level", V::I(6))]),
            ),
            "parameters[\"level\"]",
            &["\"level\"", "6", "IN_RANGE", "[1, 5]"],
        );
        assert_err(
            resolve(&params, &given(&[("name", V::S(String::new()))])),
            "parameters[\"name\"]",
            &["at least 1"],
        );
        let d = vec![param("d", T::Double)];
        assert_err(
            resolve(&d, &given(&[("d", V::D(f64::NAN))])),
            "parameters[\"d\"]",
            &["finite"],
        );
        assert_eq!(
            resolve(&d, &given(&[("d", V::D(2.5))])).unwrap()["d"],
            V::D(2.5)
        );
        assert_eq!(resolve(&[], &given(&[])).unwrap(), BTreeMap::new());
        assert_err(
            resolve(&[], &given(&[("x", V::B(true))])),
            "parameters[\"x\"]",
            &["declares none"],
        );
    }

    // --- validate_template -------------------------------------------------------------

    #[test]
    fn template_must_be_json_with_known_placeholders() {
        let params = vec![param("a", T::String), param("b.c", T::Integer)];
        let ok = |t: &str| validate_template(t, &params);
        assert_eq!(
            ok(&format!(
                r#"{{"x": "{}", "y": ["{}"]}}"#,
                ph("a"),
                ph("b.c")
            )),
            Ok(())
        );
        assert_eq!(
            ok(&format!(r#"{{"t": "{TIMEOUT_PLACEHOLDER}"}}"#)),
            Ok(()),
            "the timeout alone is a placeholder"
        );
        assert_eq!(
            ok(&format!(r#"{{"{}": 1}}"#, ph("a"))),
            Ok(()),
            "keys count"
        );
        assert_eq!(
            ok(&format!(r#""{}""#, ph("a"))),
            Ok(()),
            "a bare string is JSON too"
        );
        assert_eq!(
            ok(&format!(r#"{{"x": "pre-{}-post {}"}}"#, ph("a"), ph("b.c"))),
            Ok(())
        );
        let f = TEMPLATE_FIELD;
        assert_err(ok("{\"x\": "), f, &["valid JSON"]);
        assert_err(ok(&format!("{{'x': '{}'}}", ph("a"))), f, &["valid JSON"]);
        assert_err(
            ok(r#"{"x": 1, "y": "${other}"}"#),
            f,
            &["at least one placeholder"],
        );
        assert_err(
            ok(r#"{"x": "${AWS:IOT:COMMANDEXECUTION::parameter:a}"}"#),
            f,
            &["at least one placeholder"],
        );
        assert_err(
            ok(&format!(r#"{{"x": "{}"}}"#, ph("zz"))),
            f,
            &["parameter:zz}", "names no declared parameter", "a, b.c"],
        );
        assert_err(
            ok(&format!(r#"{{"x": "{}"}}"#, ph(""))),
            f,
            &["names no declared parameter"],
        );
        assert_err(
            ok(r#"{"x": "${aws:iot:commandexecution::thingName}"}"#),
            f,
            &[
                "unknown placeholder",
                "${aws:iot:commandexecution::thingName}",
            ],
        );
        assert_err(
            ok(r#"{"x": "${aws:iot:commandexecution::executionTimeoutSeconds}"}"#),
            f,
            &["unknown placeholder", "executionTimeoutSeconds"],
        );
        assert_err(
            ok(r#"{"x": "${aws:iot:commandexecution::parameter:a"}"#),
            f,
            &["unterminated"],
        );
        assert_err(
            ok(&format!(r#"{{"x": "{}", "x": 2}}"#, ph("a"))),
            f,
            &["duplicate object key \"x\""],
        );
        let deep = format!("{}\"{}\"{}", "[".repeat(200), ph("a"), "]".repeat(200));
        assert_err(ok(&deep), f, &["valid JSON"]);
    }

    #[test]
    fn template_size_limit_counts_characters() {
        let params = vec![param("a", T::String)];
        let core = format!(r#"{{"x": "{}"}}"#, ph("a"));
        let padded = |n: usize| format!("{core}{}", " ".repeat(n - core.chars().count()));
        assert_eq!(
            validate_template(&padded(TEMPLATE_MAX_CHARS), &params),
            Ok(())
        );
        assert_err(
            validate_template(&padded(TEMPLATE_MAX_CHARS + 1), &params),
            TEMPLATE_FIELD,
            &["32768", "32769"],
        );
        // Multi-byte characters count once.
        let wide = format!(
            r#"{{"x": "{}", "y": "{}"}}"#,
            ph("a"),
            "é".repeat(TEMPLATE_MAX_CHARS - core.chars().count() - 9)
        );
        assert_eq!(wide.chars().count(), TEMPLATE_MAX_CHARS);
        assert!(wide.len() > TEMPLATE_MAX_CHARS);
        assert_eq!(validate_template(&wide, &params), Ok(()));
    }

    // --- render -----------------------------------------------------------------------

    fn all_values() -> BTreeMap<String, ParameterValue> {
        given(&[
            ("s", V::S("hi \"you\"".into())),
            ("b", V::B(true)),
            ("i", V::I(-7)),
            ("l", V::L(9_000_000_000)),
            ("ul", V::Ul(u64::MAX)),
            ("d", V::D(2.5)),
            ("bin", V::Bin(vec![0, 1, 0xfe, 0xff])),
        ])
    }

    fn typed_template() -> String {
        format!(
            r#"{{"z": "{}", "b": "{}", "i": "{}", "l": "{}", "ul": "{}", "d": "{}", "bin": "{}", "t": "{TIMEOUT_PLACEHOLDER}", "keep": [1, -2, 0.5, null, false, "x"]}}"#,
            ph("s"),
            ph("b"),
            ph("i"),
            ph("l"),
            ph("ul"),
            ph("d"),
            ph("bin")
        )
    }

    fn tpl(template: String, output_format: OutputFormat) -> PayloadTemplate {
        PayloadTemplate {
            template,
            output_format,
        }
    }

    #[test]
    fn renders_typed_values_to_compact_json_in_template_order() {
        let out = render(
            &tpl(typed_template(), OutputFormat::Json),
            &all_values(),
            30,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"z":"hi \"you\"","b":true,"i":-7,"l":9000000000,"ul":18446744073709551615,"d":2.5,"bin":"AAH+/w==","t":30,"keep":[1,-2,0.5,null,false,"x"]}"#
        );
        let v: Json = serde_json::from_str(&text).unwrap();
        assert!(v["ul"].is_u64() && v["i"].is_i64() && v["d"].is_f64() && v["t"].is_u64());
    }

    #[test]
    fn renders_embedded_placeholders_and_keys_as_text() {
        let t = format!(
            r#"{{"cmd": "set {} to {} ({}, {}, {}, {}) in {}s", "{}": "{}", "{}-{}": 1, "raw": "{}!"}}"#,
            ph("s"),
            ph("d"),
            ph("b"),
            ph("i"),
            ph("l"),
            ph("ul"),
            TIMEOUT_PLACEHOLDER,
            ph("i"),
            ph("bin"),
            ph("b"),
            ph("s"),
            ph("bin")
        );
        let out = render(&tpl(t, OutputFormat::Json), &all_values(), 12).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"set hi \"you\" to 2.5 (true, -7, 9000000000, 18446744073709551615) in 12s","-7":"AAH+/w==","true-hi \"you\"":1,"raw":"AAH+/w==!"}"#
        );
        // A whole-number double keeps its JSON form in text too.
        let t = format!(r#"{{"x": "v={}"}}"#, ph("d"));
        let out = render(&tpl(t, OutputFormat::Json), &given(&[("d", V::D(3.0))]), 1).unwrap();
        assert_eq!(out, br#"{"x":"v=3.0"}"#);
    }

    #[test]
    fn renders_cbor_with_byte_strings_and_order() {
        let out = render(
            &tpl(typed_template(), OutputFormat::Cbor),
            &all_values(),
            30,
        )
        .unwrap();
        let v: Cbor = ciborium::de::from_reader(out.as_slice()).unwrap();
        let text = |s: &str| Cbor::Text(s.into());
        assert_eq!(
            v,
            Cbor::Map(vec![
                (text("z"), text("hi \"you\"")),
                (text("b"), Cbor::Bool(true)),
                (text("i"), Cbor::Integer((-7).into())),
                (text("l"), Cbor::Integer(9_000_000_000_i64.into())),
                (text("ul"), Cbor::Integer(u64::MAX.into())),
                (text("d"), Cbor::Float(2.5)),
                (text("bin"), Cbor::Bytes(vec![0, 1, 0xfe, 0xff])),
                (text("t"), Cbor::Integer(30.into())),
                (
                    text("keep"),
                    Cbor::Array(vec![
                        Cbor::Integer(1.into()),
                        Cbor::Integer((-2).into()),
                        Cbor::Float(0.5),
                        Cbor::Null,
                        Cbor::Bool(false),
                        text("x"),
                    ])
                ),
            ])
        );
        // Embedded BINARY is base64 text in CBOR as well.
        let t = format!(r#"{{"{}": "b64:{}"}}"#, ph("bin"), ph("bin"));
        let out = render(&tpl(t, OutputFormat::Cbor), &all_values(), 30).unwrap();
        let v: Cbor = ciborium::de::from_reader(out.as_slice()).unwrap();
        assert_eq!(v, Cbor::Map(vec![(text("AAH+/w=="), text("b64:AAH+/w=="))]));
    }

    #[test]
    fn render_errors() {
        let t = |s: String| tpl(s, OutputFormat::Json);
        assert_err(
            render(&t(format!(r#"["{}"]"#, ph("missing"))), &all_values(), 1),
            "parameters[\"missing\"]",
            &["no value"],
        );
        assert_err(
            render(
                &t(format!(r#"["{}"]"#, ph("d"))),
                &given(&[("d", V::D(f64::INFINITY))]),
                1,
            ),
            "parameters[\"d\"]",
            &["finite"],
        );
        assert_err(
            render(
                &t(format!(r#"{{"{}": 1, "{}": 2}}"#, ph("a"), ph("b"))),
                &given(&[("a", V::S("k".into())), ("b", V::S("k".into()))]),
                1,
            ),
            "parameters",
            &["\"k\" twice"],
        );
        assert_err(
            render(&t("{".into()), &all_values(), 1),
            TEMPLATE_FIELD,
            &["valid JSON"],
        );
        assert_err(
            render(
                &t(r#"["${aws:iot:commandexecution::nope}"]"#.into()),
                &all_values(),
                1,
            ),
            TEMPLATE_FIELD,
            &["unknown placeholder"],
        );
        // The rendered payload is held to the 32 KB payload limit.
        let big = given(&[("s", V::S("x".repeat(PAYLOAD_MAX_BYTES)))]);
        assert_err(
            render(&t(format!(r#"["{}"]"#, ph("s"))), &big, 1),
            "parameters",
            &["32768-byte limit"],
        );
        let fits = given(&[("s", V::S("x".repeat(PAYLOAD_MAX_BYTES - 4)))]);
        assert_eq!(
            render(&t(format!(r#"["{}"]"#, ph("s"))), &fits, 1)
                .unwrap()
                .len(),
            PAYLOAD_MAX_BYTES
        );
    }

    #[test]
    fn a_template_validates_resolves_and_renders_end_to_end() {
        let mut pct = with_conditions(
            param("pct", T::Integer),
            vec![cond(InRange, range("0", "100"))],
        );
        pct.default_value = Some(V::I(50));
        let params = vec![pct, param("label", T::String)];
        let template = format!(
            r#"{{"brightness": "{}", "label": "{}", "msg": "{} at {}%"}}"#,
            ph("pct"),
            ph("label"),
            ph("label"),
            ph("pct")
        );
        assert_eq!(validate_parameters(&params), Ok(()));
        assert_eq!(validate_template(&template, &params), Ok(()));
        let values = resolve(&params, &given(&[("label", V::S("desk".into()))])).unwrap();
        let out = render(&tpl(template, OutputFormat::Json), &values, 10).unwrap();
        assert_eq!(
            out,
            br#"{"brightness":50,"label":"desk","msg":"desk at 50%"}"#
        );
    }

    proptest! {
        #[test]
        fn typed_string_and_binary_values_survive_both_formats(s in ".{1,60}", bin in prop::collection::vec(any::<u8>(), 1..60)) {
            let values = given(&[("s", V::S(s.clone())), ("bin", V::Bin(bin.clone()))]);
            let template = format!(r#"["{}", "{}", "<{}>"]"#, ph("s"), ph("bin"), ph("s"));
            let json = render(&tpl(template.clone(), OutputFormat::Json), &values, 1).unwrap();
            let v: Json = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(v, json!([s.clone(), STANDARD.encode(&bin), format!("<{s}>")]));
            let cbor = render(&tpl(template, OutputFormat::Cbor), &values, 1).unwrap();
            let v: Cbor = ciborium::de::from_reader(cbor.as_slice()).unwrap();
            prop_assert_eq!(v, Cbor::Array(vec![Cbor::Text(s.clone()), Cbor::Bytes(bin), Cbor::Text(format!("<{s}>"))]));
        }

        #[test]
        fn typed_numbers_survive_both_formats(l in any::<i64>(), u in any::<u64>(), d in -1e300f64..1e300) {
            let values = given(&[("l", V::L(l)), ("u", V::Ul(u)), ("d", V::D(d))]);
            let template = format!(r#"["{}", "{}", "{}"]"#, ph("l"), ph("u"), ph("d"));
            let json = render(&tpl(template.clone(), OutputFormat::Json), &values, 1).unwrap();
            let v: Json = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(v[0].as_i64(), Some(l));
            prop_assert_eq!(v[1].as_u64(), Some(u));
            // serde_json's default float parser may be off by one ULP, so read the written
            // text with the exact std parser.
            let text = String::from_utf8(json).unwrap();
            let written = text.trim_end_matches(']').rsplit(',').next().unwrap();
            prop_assert_eq!(written.parse::<f64>().unwrap(), d);
            let cbor = render(&tpl(template, OutputFormat::Cbor), &values, 1).unwrap();
            let v: Cbor = ciborium::de::from_reader(cbor.as_slice()).unwrap();
            prop_assert_eq!(v, Cbor::Array(vec![Cbor::Integer(l.into()), Cbor::Integer(u.into()), Cbor::Float(d)]));
        }

        #[test]
        fn ranges_and_comparisons_agree_with_rust(v in any::<i64>(), a in any::<i64>(), b in any::<i64>()) {
            let (lo, hi) = (a.min(b), a.max(b));
            let r = range(&lo.to_string(), &hi.to_string());
            let inside = lo <= v && v <= hi;
            prop_assert_eq!(passes(T::Long, cond(InRange, r.clone()), V::L(v)), inside);
            prop_assert_eq!(passes(T::Long, cond(NotInRange, r), V::L(v)), !inside);
            prop_assert_eq!(passes(T::Long, cond(LessThan, num(&a.to_string())), V::L(v)), v < a);
            prop_assert_eq!(passes(T::Long, cond(GreaterThanEquals, num(&a.to_string())), V::L(v)), v >= a);
            let (fv, fa) = (v as f64 / 7.0, a as f64 / 7.0);
            prop_assert_eq!(passes(T::Double, cond(LessThanEquals, num(&fa.to_string())), V::D(fv)), fv <= fa);
            let uv = v.unsigned_abs();
            let ua = a.unsigned_abs();
            prop_assert_eq!(passes(T::UnsignedLong, cond(GreaterThan, num(&ua.to_string())), V::Ul(uv)), uv > ua);
        }

        #[test]
        fn text_around_a_placeholder_is_kept(pre in "[^\"\\\\$\\p{C}]{0,20}", post in "[^\"\\\\$\\p{C}]{0,20}", i in any::<i32>()) {
            let template = format!(r#"["{pre}{}{post}"]"#, ph("i"));
            prop_assert_eq!(validate_template(&template, &[param("i", T::Integer)]), Ok(()));
            let out = render(&tpl(template, OutputFormat::Json), &given(&[("i", V::I(i))]), 1).unwrap();
            let v: Json = serde_json::from_slice(&out).unwrap();
            if pre.is_empty() && post.is_empty() {
                prop_assert_eq!(v, json!([i]), "a lone placeholder is typed");
            } else {
                prop_assert_eq!(v, json!([format!("{pre}{i}{post}")]));
            }
        }

        #[test]
        fn validate_template_never_panics(s in ".{0,200}") {
            let _ = validate_template(&s, &[param("a", T::String)]);
            let _ = render(&tpl(s, OutputFormat::Cbor), &BTreeMap::new(), 1);
        }
    }
}
