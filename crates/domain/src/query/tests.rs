//! Tests of the query language: matching, precedence, errors, limits, round trips.

use super::*;
use crate::ports::ThingQuery;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn thing(name: &str, attrs: &[(&str, &str)], groups: &[&str]) -> Thing {
    Thing {
        thing_name: name.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        max_in_flight: None,
        groups: groups
            .iter()
            .map(|g| g.to_string())
            .collect::<BTreeSet<_>>(),
        version: 1,
        created_at: 0,
        last_updated_at: 0,
    }
}

fn online(connected: bool) -> Connectivity {
    Connectivity {
        connected,
        ..Connectivity::default()
    }
}

fn m(q: &str, t: &Thing, connected: bool) -> bool {
    parse(q)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .matches(t, &online(connected))
}

#[test]
fn terms_match_attributes_names_groups_and_connectivity() {
    let lamp = thing(
        "lab-lamp-1",
        &[
            ("model", "lamp-v2"),
            ("floor", "3"),
            ("fw", "1.10.2"),
            ("mac", "aa:bb"),
        ],
        &["lab"],
    );
    assert!(m("attributes.model:lamp-v2", &lamp, true));
    assert!(
        !m("attributes.model:lamp", &lamp, true),
        "equality is exact"
    );
    assert!(m("attributes.model:lamp*", &lamp, true));
    assert!(
        m("attributes.model:*", &lamp, true),
        "an empty prefix: the attribute exists"
    );
    assert!(!m("attributes.colour:*", &lamp, true));
    assert!(
        m("attributes.mac:aa:bb", &lamp, true),
        "':' may appear in a value"
    );
    assert!(m("attributes.floor>=3", &lamp, true) && m("attributes.floor <= 3", &lamp, true));
    assert!(!m("attributes.floor > 3", &lamp, true) && !m("attributes.floor<3", &lamp, true));
    assert!(m("attributes.floor > -2.5e0", &lamp, true));
    assert!(!m("attributes.fw > 1", &lamp, true), "not a number: false");
    assert!(!m("attributes.missing < 1", &lamp, true));
    assert!(m("thing_name:lab-lamp-1", &lamp, true) && m("thing_name:lab-*", &lamp, true));
    assert!(!m("thing_name:lamp*", &lamp, true));
    assert!(m("group:lab", &lamp, true) && !m("group:prod", &lamp, true));
    assert!(m("connectivity.connected:true", &lamp, true));
    assert!(m("connectivity.connected:false", &lamp, false));
}

#[test]
fn and_binds_tighter_than_or_and_not_tightest() {
    let off = thing("prod-1", &[("model", "lamp-v2"), ("floor", "5")], &[]);
    let q = "NOT connectivity.connected:true OR (group:lab AND thing_name:lab-*)";
    assert!(m(q, &off, false) && !m(q, &off, true));
    // a OR b AND c == a OR (b AND c)
    let q = parse("group:x OR attributes.model:lamp-v2 AND attributes.floor>=3").unwrap();
    assert!(matches!(&q, Query::Or(v) if v.len() == 2 && matches!(v[1], Query::And(_))));
    assert!(q.matches(&off, &online(true)));
    let q = parse("NOT group:x AND group:y").unwrap();
    assert!(matches!(&q, Query::And(v) if matches!(v[0], Query::Not(_))));
    assert_eq!(
        parse("  attributes.a:1   AND(attributes.b:2 OR attributes.c:3)  ").unwrap(),
        parse("attributes.a:1 AND (attributes.b:2 OR attributes.c:3)").unwrap(),
        "whitespace-insensitive"
    );
    assert_eq!(
        parse("group:a AND (group:b AND group:c)").unwrap(),
        Query::And(
            ["a", "b", "c"]
                .map(|g| Query::Term(Term::Group(g.into())))
                .to_vec()
        ),
        "nested ANDs are flattened"
    );
}

#[test]
fn required_terms_are_those_every_match_satisfies() {
    let q = parse("attributes.model:lamp AND (group:a OR group:b) AND thing_name:lab-*").unwrap();
    let required: Vec<String> = q
        .required_terms()
        .iter()
        .map(|t| format!("{t:?}"))
        .collect();
    assert_eq!(required.len(), 2, "{required:?}");
    assert!(
        required[0].contains("model") && required[1].contains("lab-"),
        "{required:?}"
    );
    assert_eq!(parse("group:a").unwrap().required_terms().len(), 1);
    for none in ["group:a OR group:b", "NOT group:a"] {
        assert!(parse(none).unwrap().required_terms().is_empty(), "{none}");
    }
}

#[test]
fn a_scan_narrows_by_the_narrowest_term_every_match_satisfies() {
    let scan_of = |q: &str| parse(q).unwrap().scan(7, Some("t".into()));
    let base = ThingQuery {
        page_size: 7,
        page_token: Some("t".into()),
        ..ThingQuery::default()
    };
    assert_eq!(
        scan_of("attributes.model:lamp AND group:lab AND thing_name:lab-*"),
        ThingQuery {
            group: Some("lab".into()),
            ..base.clone()
        }
    );
    assert_eq!(
        scan_of("attributes.floor >= 3 AND attributes.model:lamp"),
        ThingQuery {
            attribute: Some(("model".into(), "lamp".into())),
            ..base.clone()
        }
    );
    assert_eq!(
        scan_of("thing_name:lab-* AND attributes.model:lamp*"),
        ThingQuery {
            name_prefix: Some("lab-".into()),
            ..base.clone()
        }
    );
    assert_eq!(scan_of("group:lab OR group:field"), base.clone());
    assert_eq!(scan_of("NOT group:lab"), base);
}

#[test]
fn all_joins_queries_into_one_flat_and() {
    let q = |s: &str| parse(s).unwrap();
    assert_eq!(Query::all(vec![]), None);
    assert_eq!(Query::all(vec![q("group:lab")]), Some(q("group:lab")));
    assert_eq!(
        Query::all(vec![
            q("attributes.a:1 AND attributes.b:2"),
            q("thing_name:lamp-*"),
            q("group:x OR group:y"),
        ]),
        Some(q(
            "attributes.a:1 AND attributes.b:2 AND thing_name:lamp-* AND (group:x OR group:y)"
        ))
    );
}

#[test]
fn connectivity_terms_are_found_at_any_depth() {
    assert!(
        parse("group:a AND (NOT connectivity.connected:true OR thing_name:x)")
            .unwrap()
            .uses_connectivity()
    );
    assert!(
        !parse("group:a OR attributes.floor >= 3")
            .unwrap()
            .uses_connectivity()
    );
}

#[test]
fn errors_name_the_column_and_the_problem() {
    let cases = [
        ("", "column 1: expected a term"),
        ("group:lab AND", "column 14: expected a term"),
        ("colour:red", "column 1: unknown field \"colour\""),
        (
            "attributes.floor >= three",
            "column 21: expected a finite decimal number",
        ),
        ("attributes.floor >= 1e999", "finite"),
        (
            "group:lab OR (group:x",
            "column 22: expected ')' to close the '(' at column 14",
        ),
        ("group:lab)", "column 10: unmatched ')'"),
        (
            "group:lab and group:x",
            "column 11: expected AND, OR or the end of the query, found \"and\"",
        ),
        ("thing_name >= 3", "column 12: thing_name only supports ':'"),
        ("connectivity.connected:yes", "expected true or false"),
        ("thing_name:a*b", "a thing name must match"),
        ("attributes.:x", "column 1: an attribute name must be"),
        ("attributes.a b", "column 14: expected ':' or a comparison"),
        ("group:", "column 7: expected a value"),
        ("AND group:x", "column 1: expected a term before AND/OR"),
    ];
    for (q, want) in cases {
        let err = parse(q).unwrap_err();
        assert_eq!(err.field, "query");
        assert!(err.message.contains(want), "{q:?}: {}", err.message);
    }
}

#[test]
fn limits_bound_length_terms_and_depth() {
    let long = format!("thing_name:{}", "a".repeat(QUERY_MAX_CHARS));
    assert!(parse(&long).unwrap_err().message.contains("2048"));
    let terms = |n: usize| {
        (0..n)
            .map(|i| format!("group:g{i}"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let nested = |n: usize| format!("{}group:g{}", "(".repeat(n), ")".repeat(n));
    // At each limit a query parses; one past it, it is refused saying which limit.
    for (at, past, limit) in [
        (
            terms(QUERY_MAX_TERMS),
            terms(QUERY_MAX_TERMS + 1),
            "at most 64 terms",
        ),
        (
            nested(QUERY_MAX_DEPTH),
            nested(QUERY_MAX_DEPTH + 1),
            "nesting deeper than 16",
        ),
    ] {
        assert!(parse(&at).is_ok(), "{limit}");
        let message = parse(&past).unwrap_err().message;
        assert!(message.contains(limit), "{limit}: {message}");
    }
    let nots = |n: usize| format!("{}group:g", "NOT ".repeat(n));
    assert!(parse(&nots(QUERY_MAX_DEPTH)).is_ok());
    assert!(parse(&nots(QUERY_MAX_DEPTH + 1)).is_err());
}

#[test]
fn display_prints_canonical_text_and_serde_uses_it() {
    let q = parse("NOT(group:a OR group:b)AND attributes.floor>=3 OR thing_name:x*").unwrap();
    assert_eq!(
        q.to_string(),
        "NOT (group:a OR group:b) AND attributes.floor >= 3 OR thing_name:x*"
    );
    let json = serde_json::to_string(&q).unwrap();
    assert_eq!(serde_json::from_str::<Query>(&json).unwrap(), q);
    assert!(serde_json::from_str::<Query>("\"group:\"").is_err());
}

fn term_strategy() -> impl Strategy<Value = Term> {
    let name = "[a-zA-Z0-9_.,@/#=\\[\\]-]{1,12}";
    let value = "[a-zA-Z0-9_.,@/:#=\\[\\]-]{0,12}";
    let m = |v: &'static str| {
        (v, any::<bool>()).prop_filter_map("empty exact", |(s, p): (String, bool)| {
            if p {
                Some(Match::Prefix(s))
            } else if s.is_empty() {
                None
            } else {
                Some(Match::Exact(s))
            }
        })
    };
    let op = prop_oneof![
        Just(CompareOp::Lt),
        Just(CompareOp::Le),
        Just(CompareOp::Gt),
        Just(CompareOp::Ge)
    ];
    prop_oneof![
        (name, m(value)).prop_map(|(name, value)| Term::Attribute { name, value }),
        (name, op, "-?[0-9]{1,5}(\\.[0-9]{1,3})?(e[+-]?[0-9]{1,2})?").prop_map(|(name, op, n)| {
            Term::AttributeCompare {
                name,
                op,
                number: Number::parse(&n).expect("generated number"),
            }
        }),
        m("[a-zA-Z0-9:_-]{0,12}").prop_map(Term::ThingName),
        any::<bool>().prop_map(Term::Connected),
        "[a-zA-Z0-9:_-]{1,12}".prop_map(Term::Group),
    ]
}

fn query_strategy() -> impl Strategy<Value = Query> {
    term_strategy()
        .prop_map(Query::Term)
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|q| Query::Not(Box::new(q))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(|v| Query::join(true, v)),
                prop::collection::vec(inner, 2..4).prop_map(|v| Query::join(false, v)),
            ]
        })
}

proptest! {
    #[test]
    fn display_round_trips(q in query_strategy()) {
        let text = q.to_string();
        let back = parse(&text);
        prop_assert!(back.is_ok(), "{}: {:?}", text, back);
        prop_assert_eq!(back.unwrap(), q);
    }

    #[test]
    fn parse_never_panics(text in "\\PC{0,80}") {
        let _ = parse(&text);
    }

    #[test]
    fn parse_never_panics_on_token_soup(parts in prop::collection::vec(prop_oneof![
        Just("AND"), Just("OR"), Just("NOT"), Just("("), Just(")"), Just(" "), Just(":"), Just(">="),
        Just("<"), Just("attributes.a"), Just("thing_name"), Just("group"), Just("x*"), Just("3"),
        Just("connectivity.connected"), Just("true"), Just("é"),
    ], 0..40)) {
        let text: String = parts.concat();
        if let Ok(q) = parse(&text) {
            prop_assert_eq!(parse(&q.to_string()).ok(), Some(q));
        }
    }
}
