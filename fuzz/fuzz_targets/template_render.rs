//! Payload templates: arbitrary parameter definitions, templates and start values through
//! `template::validate_parameters`, `validate_template`, `resolve` and `render`.
//!
//! The input is structured (`arbitrary`) so that most runs get past JSON parsing: templates
//! are JSON trees whose strings mix text with placeholders naming the declared parameters,
//! unknown ones, the timeout and broken ones; parameter names come mostly from a small pool,
//! so that placeholders, given values and duplicates meet. A raw template text is tried too.
//!
//! Checked beyond "does not panic": a template and parameters that validate always resolve
//! to values of the declared types, and then render either to a payload of at most 32 KiB
//! that decodes in its output format (deterministically), or fail only for the rendered
//! payload's own reasons (too large, an object key twice); messages stay bounded.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use ciborium::Value as Cbor;
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::limits::PAYLOAD_MAX_BYTES;
use fleetcmd_domain::model::{
    CommandParameter, ComparisonOperator, Operand, OutputFormat, ParameterType, ParameterValue,
    PayloadTemplate, ValueCondition,
};
use fleetcmd_domain::template::{
    self, PARAMETER_PLACEHOLDER_PREFIX, TIMEOUT_PLACEHOLDER, render, resolve,
};
use libfuzzer_sys::fuzz_target;

/// Parameter names most inputs use, so that placeholders and values find their parameter.
const NAMES: [&str; 6] = ["a", "b", "temp", "x.y", "$v", "n-1"];

/// An error message about a template stays bounded whatever the input: each quoted piece is
/// cut to 64 characters, and a message lists at most 10 operands or names.
const TEMPLATE_MESSAGE_MAX_BYTES: usize = 16 * 1024;

#[derive(Debug, Arbitrary)]
enum Name {
    Pool(u8),
    Any(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Pool(i) => NAMES[usize::from(*i) % NAMES.len()].to_string(),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Value {
    S(String),
    B(bool),
    I(i32),
    L(i64),
    D(f64),
    Bin(Vec<u8>),
    Ul(u64),
}

impl From<&Value> for ParameterValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::S(s) => ParameterValue::S(s.clone()),
            Value::B(b) => ParameterValue::B(*b),
            Value::I(i) => ParameterValue::I(*i),
            Value::L(l) => ParameterValue::L(*l),
            Value::D(d) => ParameterValue::D(*d),
            Value::Bin(b) => ParameterValue::Bin(b.clone()),
            Value::Ul(u) => ParameterValue::Ul(*u),
        }
    }
}

/// An operand number: mostly well-formed, sometimes any text.
#[derive(Debug, Arbitrary)]
enum Number {
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Text(String),
}

impl Number {
    fn text(&self) -> String {
        match self {
            Number::Int(i) => i.to_string(),
            Number::Unsigned(u) => u.to_string(),
            Number::Float(f) => f.to_string(),
            Number::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum OperandInput {
    Number(Number),
    Numbers(Vec<Number>),
    String(String),
    Strings(Vec<String>),
    Range(Number, Number),
}

#[derive(Debug, Arbitrary)]
struct Condition {
    operator: u8,
    operand: OperandInput,
}

impl From<&Condition> for ValueCondition {
    fn from(c: &Condition) -> Self {
        const OPERATORS: [ComparisonOperator; 10] = ComparisonOperator::ALL;
        let operand = match &c.operand {
            OperandInput::Number(n) => Operand::Number(n.text()),
            OperandInput::Numbers(ns) => Operand::Numbers(ns.iter().map(Number::text).collect()),
            OperandInput::String(s) => Operand::String(s.clone()),
            OperandInput::Strings(ss) => Operand::Strings(ss.clone()),
            OperandInput::Range(a, b) => Operand::NumberRange {
                min: a.text(),
                max: b.text(),
            },
        };
        ValueCondition {
            operator: OPERATORS[usize::from(c.operator) % OPERATORS.len()],
            operand,
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Parameter {
    name: Name,
    /// An index into [`ParameterType::ALL`].
    r#type: u8,
    default_value: Option<Value>,
    value: Option<Value>,
    conditions: Vec<Condition>,
}

/// A piece of a template string.
#[derive(Debug, Arbitrary)]
enum Piece {
    Text(String),
    Parameter(Name),
    Timeout,
    /// Something in the reserved namespace that is not a placeholder, or is cut short.
    Broken(String),
}

impl Piece {
    fn write(&self, out: &mut String) {
        match self {
            Piece::Text(t) => out.push_str(t),
            Piece::Parameter(n) => {
                out.push_str(PARAMETER_PLACEHOLDER_PREFIX);
                out.push_str(&n.text());
                out.push('}');
            }
            Piece::Timeout => out.push_str(TIMEOUT_PLACEHOLDER),
            Piece::Broken(s) => {
                out.push_str("${aws:iot:commandexecution::");
                out.push_str(s);
            }
        }
    }
}

fn text_of(pieces: &[Piece]) -> String {
    let mut s = String::new();
    for p in pieces {
        p.write(&mut s);
    }
    s
}

/// A JSON template tree.
#[derive(Debug, Arbitrary)]
enum Tree {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Vec<Piece>),
    Array(Vec<Tree>),
    Object(Vec<(Vec<Piece>, Tree)>),
}

impl Tree {
    fn write(&self, out: &mut String) {
        let string = |s: &str| serde_json::to_string(s).expect("a string encodes");
        match self {
            Tree::Null => out.push_str("null"),
            Tree::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Tree::Int(i) => out.push_str(&i.to_string()),
            Tree::Float(f) => out.push_str(
                &serde_json::Number::from_f64(*f)
                    .map_or_else(|| "0".to_string(), |n| n.to_string()),
            ),
            Tree::Str(pieces) => out.push_str(&string(&text_of(pieces))),
            Tree::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Tree::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&string(&text_of(k)));
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    parameters: Vec<Parameter>,
    template: Tree,
    /// When set, used as the template text instead of `template`.
    raw: Option<String>,
    given: Vec<(Name, Value)>,
    timeout_secs: u16,
    cbor: bool,
}

fn check_message(e: &ValidationError) {
    assert!(
        e.message.len() <= TEMPLATE_MESSAGE_MAX_BYTES && e.field.len() <= 1024,
        "a {}-byte message on a {}-byte field",
        e.message.len(),
        e.field.len()
    );
}

fuzz_target!(|input: Input| {
    let parameters: Vec<CommandParameter> = input
        .parameters
        .iter()
        .map(|p| CommandParameter {
            name: p.name.text(),
            r#type: ParameterType::ALL[usize::from(p.r#type) % ParameterType::ALL.len()],
            default_value: p.default_value.as_ref().map(Into::into),
            value: p.value.as_ref().map(Into::into),
            value_conditions: p.conditions.iter().map(Into::into).collect(),
            description: String::new(),
        })
        .collect();
    let text = match &input.raw {
        Some(raw) => raw.clone(),
        None => {
            let mut s = String::new();
            input.template.write(&mut s);
            s
        }
    };
    let given: BTreeMap<String, ParameterValue> = input
        .given
        .iter()
        .map(|(n, v)| (n.text(), v.into()))
        .collect();
    let output_format = if input.cbor {
        OutputFormat::Cbor
    } else {
        OutputFormat::Json
    };
    let timeout_secs = u64::from(input.timeout_secs);

    let valid_parameters = template::validate_parameters(&parameters);
    let valid_template = template::validate_template(&text, &parameters);
    for r in [&valid_parameters, &valid_template] {
        if let Err(e) = r {
            check_message(e);
        }
    }
    let resolved = resolve(&parameters, &given);
    let values = match resolved {
        Ok(values) => {
            // Every declared parameter, and nothing else, has a value of its type.
            for p in &parameters {
                let v = values
                    .get(&p.name)
                    .expect("a value for each declared parameter");
                if parameters.iter().filter(|q| q.name == p.name).count() == 1 {
                    assert_eq!(v.parameter_type(), p.r#type, "{}", p.name);
                }
            }
            assert!(
                values
                    .keys()
                    .all(|k| parameters.iter().any(|p| &p.name == k))
            );
            values
        }
        Err(e) => {
            check_message(&e);
            // Rendering still must not panic with whatever values were given.
            given.clone()
        }
    };
    let template = PayloadTemplate {
        template: text,
        output_format,
    };
    let rendered = render(&template, &values, timeout_secs);
    match &rendered {
        Ok(bytes) => {
            assert!(bytes.len() <= PAYLOAD_MAX_BYTES, "{} bytes", bytes.len());
            match output_format {
                OutputFormat::Json => {
                    serde_json::from_slice::<serde_json::Value>(bytes)
                        .expect("a rendered JSON payload is JSON");
                }
                OutputFormat::Cbor => {
                    let mut rest = bytes.as_slice();
                    ciborium::de::from_reader::<Cbor, _>(&mut rest)
                        .expect("a rendered CBOR payload is CBOR");
                    assert!(rest.is_empty(), "one CBOR item, nothing after it");
                }
            }
            assert_eq!(
                render(&template, &values, timeout_secs).as_ref(),
                Ok(bytes),
                "rendering is deterministic"
            );
        }
        Err(e) => {
            check_message(e);
            if valid_parameters.is_ok()
                && valid_template.is_ok()
                && resolve(&parameters, &given).is_ok()
            {
                // What validated can only fail on the rendered payload itself.
                assert_eq!(e.field, "parameters", "{e}");
                assert!(
                    e.message.contains("-byte limit") || e.message.contains("twice"),
                    "{e}"
                );
            }
        }
    }
});
