//! validate_template and render.

use super::*;

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
