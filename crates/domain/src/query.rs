//! A small query language over things, for dynamic groups and rollout targets.
//!
//! Terms: `attributes.<name>:<value>` (equality), `attributes.<name>:<prefix>*` (prefix),
//! `attributes.<name> >= 3` (also `>`, `<`, `<=`; the attribute must hold a finite number,
//! else the term is false), `thing_name:<value>` and `thing_name:<prefix>*`,
//! `connectivity.connected:true|false`, and `group:<name>` (static group membership).
//! Combinators: `NOT` (tightest), `AND`, then `OR` (loosest), and parentheses; keywords are
//! upper case, whitespace between tokens is free. Example:
//! `NOT connectivity.connected:true OR (group:lab AND thing_name:lab-*)`.
//!
//! Queries are bounded (2,048 characters, 64 terms, nesting depth 16) because they arrive
//! from API callers and are evaluated against every thing of a fleet. Parsing normalises
//! nested `AND`s (and `OR`s) into one list, so `Display` prints a query that parses back to
//! the same value.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ValidationError, ensure};
use crate::ports::ThingQuery;
use crate::thing::{ATTRIBUTE_NAME_MAX_CHARS, ATTRIBUTE_VALUE_MAX_CHARS, Connectivity, Thing};

/// The longest query text, in characters.
pub const QUERY_MAX_CHARS: usize = 2048;
/// The most terms one query may hold.
pub const QUERY_MAX_TERMS: usize = 64;
/// The deepest nesting of parentheses and `NOT`s.
pub const QUERY_MAX_DEPTH: usize = 16;
const NAME_MAX_CHARS: usize = 128;

/// A parsed query. `And` and `Or` hold at least two operands, none of the same kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Query {
    Term(Term),
    Not(Box<Query>),
    And(Vec<Query>),
    Or(Vec<Query>),
}

/// One condition on a thing.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// `attributes.<name>:<value>` or `attributes.<name>:<prefix>*`.
    Attribute { name: String, value: Match },
    /// `attributes.<name> <op> <number>`.
    AttributeCompare {
        name: String,
        op: CompareOp,
        number: Number,
    },
    /// `thing_name:<value>` or `thing_name:<prefix>*`.
    ThingName(Match),
    /// `connectivity.connected:true|false`.
    Connected(bool),
    /// `group:<name>`.
    Group(String),
}

/// A string condition: equal to, or starting with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Exact(String),
    Prefix(String),
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A number as written in the query (kept so `Display` reproduces it) and its value.
#[derive(Debug, Clone)]
pub struct Number {
    literal: String,
    value: f64,
}

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        // The value follows from the literal.
        self.literal == other.literal
    }
}

impl Number {
    /// A decimal literal: `-?(digits[.digits]|.digits)([eE][+-]?digits)?`, finite.
    pub fn parse(literal: &str) -> Option<Self> {
        let b = literal.as_bytes();
        let mut i = usize::from(b.first() == Some(&b'-'));
        let digits = |i: &mut usize| {
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - start
        };
        let mut mantissa = digits(&mut i);
        if b.get(i) == Some(&b'.') {
            i += 1;
            mantissa += digits(&mut i);
        }
        if mantissa == 0 {
            return None;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return None;
            }
        }
        if i != b.len() {
            return None;
        }
        let value: f64 = literal.parse().ok()?;
        value.is_finite().then(|| Self {
            literal: literal.to_string(),
            value,
        })
    }

    pub fn value(&self) -> f64 {
        self.value
    }
}

impl Match {
    fn test(&self, s: &str) -> bool {
        match self {
            Self::Exact(v) => s == v,
            Self::Prefix(p) => s.starts_with(p.as_str()),
        }
    }
}

impl Query {
    /// Whether `thing` (with its `connectivity`) satisfies the query.
    pub fn matches(&self, thing: &Thing, connectivity: &Connectivity) -> bool {
        match self {
            Self::Term(t) => t.matches(thing, connectivity),
            Self::Not(q) => !q.matches(thing, connectivity),
            Self::And(qs) => qs.iter().all(|q| q.matches(thing, connectivity)),
            Self::Or(qs) => qs.iter().any(|q| q.matches(thing, connectivity)),
        }
    }

    /// The terms every match satisfies: the query when it is one term, else the terms of
    /// its top-level `AND`. A store narrows its scan with one of them (an index on attribute
    /// values, group members, a name range) and checks the whole query on what it finds.
    pub fn required_terms(&self) -> Vec<&Term> {
        match self {
            Self::Term(t) => vec![t],
            Self::And(qs) => qs
                .iter()
                .filter_map(|q| match q {
                    Self::Term(t) => Some(t),
                    _ => None,
                })
                .collect(),
            Self::Not(_) | Self::Or(_) => vec![],
        }
    }

    /// The read model's listing (one page of `page_size`) that finds every match with the
    /// fewest things: by one term every match satisfies (group members, an attribute's
    /// value, a name prefix), or all things. The caller checks the whole query on each.
    pub fn scan(&self, page_size: u32, page_token: Option<String>) -> ThingQuery {
        let mut scan = ThingQuery {
            page_size,
            page_token,
            ..ThingQuery::default()
        };
        let terms = self.required_terms();
        let by_group = terms.iter().find_map(|t| match t {
            Term::Group(g) => Some(g.clone()),
            _ => None,
        });
        let by_attribute = terms.iter().find_map(|t| match t {
            Term::Attribute {
                name,
                value: Match::Exact(v),
            } => Some((name.clone(), v.clone())),
            _ => None,
        });
        let by_name = terms.iter().find_map(|t| match t {
            Term::ThingName(Match::Exact(p) | Match::Prefix(p)) => Some(p.clone()),
            _ => None,
        });
        if let Some(g) = by_group {
            scan.group = Some(g);
        } else if let Some(a) = by_attribute {
            scan.attribute = Some(a);
        } else {
            scan.name_prefix = by_name;
        }
        scan
    }

    /// Whether a term reads connectivity (which only a broker that reports presence knows).
    pub fn uses_connectivity(&self) -> bool {
        match self {
            Self::Term(t) => matches!(t, Term::Connected(_)),
            Self::Not(q) => q.uses_connectivity(),
            Self::And(qs) | Self::Or(qs) => qs.iter().any(Query::uses_connectivity),
        }
    }

    /// The query all of `items` satisfy (`None` for no items): their `AND`, flattened.
    pub fn all(items: Vec<Query>) -> Option<Query> {
        (!items.is_empty()).then(|| Self::join(true, items))
    }

    /// Joins operands into `And` (or `Or`), flattening operands of the same kind.
    fn join(and: bool, items: Vec<Query>) -> Query {
        let mut flat = Vec::with_capacity(items.len());
        for q in items {
            match q {
                Query::And(inner) if and => flat.extend(inner),
                Query::Or(inner) if !and => flat.extend(inner),
                q => flat.push(q),
            }
        }
        if flat.len() == 1 {
            return flat.pop().expect("one operand");
        }
        if and {
            Query::And(flat)
        } else {
            Query::Or(flat)
        }
    }
}

impl Term {
    fn matches(&self, thing: &Thing, connectivity: &Connectivity) -> bool {
        match self {
            Self::Attribute { name, value } => {
                thing.attributes.get(name).is_some_and(|v| value.test(v))
            }
            Self::AttributeCompare { name, op, number } => {
                let Some(v) = thing
                    .attributes
                    .get(name)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite())
                else {
                    return false;
                };
                let n = number.value;
                match op {
                    CompareOp::Lt => v < n,
                    CompareOp::Le => v <= n,
                    CompareOp::Gt => v > n,
                    CompareOp::Ge => v >= n,
                }
            }
            Self::ThingName(m) => m.test(&thing.thing_name),
            Self::Connected(c) => connectivity.connected == *c,
            Self::Group(g) => thing.groups.contains(g),
        }
    }
}

/// Parses a query; errors name the field `query` and the 1-based column of the problem.
pub fn parse(text: &str) -> Result<Query, ValidationError> {
    let chars: Vec<char> = text.chars().collect();
    let (length, max) = (chars.len(), QUERY_MAX_CHARS);
    ensure(length <= max, "query", || {
        format!("must be at most {max} characters, got {length}")
    })?;
    let mut p = Parser {
        chars,
        pos: 0,
        terms: 0,
        depth: 0,
    };
    let q = p.or()?;
    p.skip_ws();
    match p.peek() {
        None => Ok(q),
        Some(')') => Err(p.error(p.pos, "unmatched ')'")),
        Some(_) => {
            let found = p.word_at(p.pos);
            Err(p.error(
                p.pos,
                format!("expected AND, OR or the end of the query, found {found:?}"),
            ))
        }
    }
}

impl TryFrom<String> for Query {
    type Error = ValidationError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        parse(&text)
    }
}

impl From<Query> for String {
    fn from(q: Query) -> Self {
        q.to_string()
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    terms: usize,
    depth: usize,
}

fn ends_word(c: char) -> bool {
    c.is_whitespace() || c == '(' || c == ')'
}

fn is_attribute_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

impl Parser {
    fn error(&self, at: usize, msg: impl fmt::Display) -> ValidationError {
        ValidationError::new("query", format!("at column {}: {msg}", at + 1))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// The word starting at `at` (up to whitespace or a parenthesis), for messages.
    fn word_at(&self, at: usize) -> String {
        let w: String = self.chars[at..]
            .iter()
            .take_while(|c| !ends_word(**c))
            .take(40)
            .collect();
        if w.is_empty() {
            self.chars
                .get(at)
                .map(|c| c.to_string())
                .unwrap_or_default()
        } else {
            w
        }
    }

    /// Consumes `kw` if it stands as a whole word at the current position.
    fn keyword(&mut self, kw: &str) -> bool {
        let n = kw.len();
        let matches = self.chars.len() >= self.pos + n
            && self.chars[self.pos..self.pos + n]
                .iter()
                .copied()
                .eq(kw.chars())
            && self.chars.get(self.pos + n).is_none_or(|c| ends_word(*c));
        if matches {
            self.pos += n;
        }
        matches
    }

    fn or(&mut self) -> Result<Query, ValidationError> {
        self.joined("OR", false, Self::and)
    }

    fn and(&mut self) -> Result<Query, ValidationError> {
        self.joined("AND", true, Self::unary)
    }

    /// One or more `operand`s separated by `keyword`, joined as a conjunction (`all`) or a
    /// disjunction: OR and AND differ only in their keyword and what binds tighter.
    fn joined(
        &mut self,
        keyword: &str,
        all: bool,
        operand: fn(&mut Self) -> Result<Query, ValidationError>,
    ) -> Result<Query, ValidationError> {
        let mut items = vec![operand(self)?];
        loop {
            self.skip_ws();
            if !self.keyword(keyword) {
                return Ok(Query::join(all, items));
            }
            items.push(operand(self)?);
        }
    }

    fn nest(&mut self, at: usize) -> Result<(), ValidationError> {
        self.depth += 1;
        if self.depth > QUERY_MAX_DEPTH {
            return Err(self.error(at, format!("nesting deeper than {QUERY_MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Query, ValidationError> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            None => Err(self.error(
                at,
                "expected a term, '(' or NOT, found the end of the query",
            )),
            Some('(') => {
                self.nest(at)?;
                self.pos += 1;
                let q = self.or()?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(self.error(
                        self.pos,
                        format!("expected ')' to close the '(' at column {}", at + 1),
                    ));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(q)
            }
            Some(')') => Err(self.error(at, "expected a term, '(' or NOT, found ')'")),
            Some(_) if self.keyword("NOT") => {
                self.nest(at)?;
                let q = self.unary()?;
                self.depth -= 1;
                Ok(Query::Not(Box::new(q)))
            }
            Some(_) => {
                if self.keyword("AND") || self.keyword("OR") {
                    return Err(self.error(at, "expected a term before AND/OR"));
                }
                self.terms += 1;
                if self.terms > QUERY_MAX_TERMS {
                    return Err(self.error(
                        at,
                        format!("a query may hold at most {QUERY_MAX_TERMS} terms"),
                    ));
                }
                self.term().map(Query::Term)
            }
        }
    }

    fn term(&mut self) -> Result<Term, ValidationError> {
        let at = self.pos;
        let field: String = self.chars[at..]
            .iter()
            .take_while(|c| !ends_word(**c) && !matches!(c, ':' | '<' | '>'))
            .collect();
        self.pos += field.chars().count();
        self.skip_ws();
        let op_at = self.pos;
        let op = match (self.peek(), self.chars.get(self.pos + 1)) {
            (Some(':'), _) => None,
            (Some('<'), Some('=')) => Some(CompareOp::Le),
            (Some('<'), _) => Some(CompareOp::Lt),
            (Some('>'), Some('=')) => Some(CompareOp::Ge),
            (Some('>'), _) => Some(CompareOp::Gt),
            _ => {
                return Err(self.error(
                    op_at,
                    format!("expected ':' or a comparison after {field:?}"),
                ));
            }
        };
        self.pos += match op {
            Some(CompareOp::Le | CompareOp::Ge) => 2,
            _ => 1,
        };
        self.skip_ws();
        let value_at = self.pos;
        let value: String = self.chars[value_at..]
            .iter()
            .take_while(|c| !ends_word(**c))
            .collect();
        self.pos += value.chars().count();
        if value.is_empty() {
            return Err(self.error(value_at, format!("expected a value after {field:?}")));
        }
        let bad_value = |p: &Self, rule: &str| p.error(value_at, format!("{rule}, got {value:?}"));
        if let Some(name) = field.strip_prefix("attributes.") {
            if name.is_empty() || name.chars().count() > ATTRIBUTE_NAME_MAX_CHARS {
                return Err(self.error(
                    at,
                    format!("an attribute name must be 1–{ATTRIBUTE_NAME_MAX_CHARS} characters"),
                ));
            }
            if let Some(c) = name.chars().find(|c| !is_attribute_char(*c)) {
                return Err(self.error(at, format!("an attribute name may not contain {c:?}")));
            }
            let name = name.to_string();
            return match op {
                Some(op) => match Number::parse(&value) {
                    Some(number) => Ok(Term::AttributeCompare { name, op, number }),
                    None => Err(bad_value(self, "expected a finite decimal number")),
                },
                None => {
                    let m = pattern(&value, is_attribute_char, ATTRIBUTE_VALUE_MAX_CHARS)
                        .ok_or_else(|| bad_value(self, "an attribute value must match [a-zA-Z0-9_.,@/:#=\\[\\]-]* with an optional trailing '*'"))?;
                    Ok(Term::Attribute { name, value: m })
                }
            };
        }
        let known = matches!(
            field.as_str(),
            "thing_name" | "group" | "connectivity.connected"
        );
        if !known {
            return Err(self.error(at, format!(
                "unknown field {field:?}; expected attributes.<name>, thing_name, group or connectivity.connected"
            )));
        }
        if op.is_some() {
            return Err(self.error(op_at, format!("{field} only supports ':'")));
        }
        match field.as_str() {
            "thing_name" => pattern(&value, is_name_char, NAME_MAX_CHARS)
                .map(Term::ThingName)
                .ok_or_else(|| {
                    bad_value(
                        self,
                        "a thing name must match [a-zA-Z0-9:_-]+ with an optional trailing '*'",
                    )
                }),
            "group" => {
                let ok = value.chars().count() <= NAME_MAX_CHARS && value.chars().all(is_name_char);
                if ok {
                    Ok(Term::Group(value))
                } else {
                    Err(bad_value(
                        self,
                        "a group name must match [a-zA-Z0-9:_-]{1,128}",
                    ))
                }
            }
            _ => match value.as_str() {
                "true" => Ok(Term::Connected(true)),
                "false" => Ok(Term::Connected(false)),
                _ => Err(bad_value(self, "expected true or false")),
            },
        }
    }
}

/// `value` or `prefix*`, each character allowed by `ok`, at most `max` characters.
fn pattern(value: &str, ok: fn(char) -> bool, max: usize) -> Option<Match> {
    let (text, prefix) = match value.strip_suffix('*') {
        Some(p) => (p, true),
        None => (value, false),
    };
    if text.chars().count() > max || !text.chars().all(ok) || (!prefix && text.is_empty()) {
        return None;
    }
    Some(if prefix {
        Match::Prefix(text.into())
    } else {
        Match::Exact(text.into())
    })
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(v) => f.write_str(v),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attribute { name, value } => write!(f, "attributes.{name}:{value}"),
            Self::AttributeCompare { name, op, number } => {
                let op = match op {
                    CompareOp::Lt => "<",
                    CompareOp::Le => "<=",
                    CompareOp::Gt => ">",
                    CompareOp::Ge => ">=",
                };
                write!(f, "attributes.{name} {op} {}", number.literal)
            }
            Self::ThingName(m) => write!(f, "thing_name:{m}"),
            Self::Connected(c) => write!(f, "connectivity.connected:{c}"),
            Self::Group(g) => write!(f, "group:{g}"),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Parenthesise only where precedence needs it: an OR inside an AND, and any AND or
        // OR under a NOT.
        let list =
            |f: &mut fmt::Formatter<'_>, qs: &[Query], sep: &str, wrap: fn(&Query) -> bool| {
                for (i, q) in qs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(sep)?;
                    }
                    if wrap(q) {
                        write!(f, "({q})")?
                    } else {
                        write!(f, "{q}")?
                    }
                }
                Ok(())
            };
        match self {
            Self::Term(t) => write!(f, "{t}"),
            Self::Not(q) => match **q {
                Self::And(_) | Self::Or(_) => write!(f, "NOT ({q})"),
                _ => write!(f, "NOT {q}"),
            },
            Self::And(qs) => list(f, qs, " AND ", |q| matches!(q, Self::Or(_) | Self::And(_))),
            Self::Or(qs) => list(f, qs, " OR ", |q| matches!(q, Self::Or(_))),
        }
    }
}

#[cfg(test)]
mod tests;
