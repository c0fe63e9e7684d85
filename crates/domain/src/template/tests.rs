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
    let check =
        |c: ValueCondition| validate_parameters(&[with_conditions(param("s", T::String), vec![c])]);
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
        validate_parameters(&[with_conditions(param("n", t), vec![cond(Equals, num(n))])]).is_ok()
    };
    assert!(accepts(T::Integer, "2147483647") && accepts(T::Integer, "-2147483648"));
    assert!(!accepts(T::Integer, "2147483648") && !accepts(T::Integer, "1.5"));
    assert!(accepts(T::Long, "9223372036854775807") && accepts(T::Long, "-9223372036854775808"));
    assert!(!accepts(T::Long, "9223372036854775808") && !accepts(T::Long, "1e3"));
    assert!(accepts(T::UnsignedLong, "18446744073709551615") && accepts(T::UnsignedLong, "0"));
    assert!(!accepts(T::UnsignedLong, "18446744073709551616"));
    assert!(!accepts(T::UnsignedLong, "-1") && !accepts(T::UnsignedLong, "+1"));
    assert!(accepts(T::Double, "1e3") && accepts(T::Double, "-0.25") && accepts(T::Double, "7"));
    assert!(
        !accepts(T::Double, "NaN") && !accepts(T::Double, "inf") && !accepts(T::Double, "1e999")
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

mod render;
