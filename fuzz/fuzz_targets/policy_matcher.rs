//! Access policies: `policy::glob_match` on arbitrary patterns and texts, checked against a
//! plain dynamic-programming matcher, and policy files (TOML) parsed and validated, with
//! every accepted policy's grants exercised.
#![no_main]

use arbitrary::Arbitrary;
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::policy::{Action, Policy, glob_match};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    pattern: &'a str,
    text: &'a str,
    /// A policy file.
    toml: &'a str,
    action: u8,
}

/// `*` any run of characters, `?` one: the textbook O(p × t) table.
fn reference_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // row[j]: does p[..i] match t[..j]?
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        next[0] = row[0] && pc == '*';
        for j in 1..=t.len() {
            next[j] = match pc {
                '*' => row[j] || next[j - 1],
                '?' => row[j - 1],
                c => row[j - 1] && c == t[j - 1],
            };
        }
        row = next;
    }
    row[t.len()]
}

fuzz_target!(|input: Input<'_>| {
    // Bound the table's size so each run stays fast; the matcher itself takes any input.
    if input.pattern.len() <= 256 && input.text.len() <= 256 {
        assert_eq!(
            glob_match(input.pattern, input.text),
            reference_match(input.pattern, input.text),
            "pattern {:?} on {:?}",
            input.pattern,
            input.text
        );
    } else {
        let _ = glob_match(input.pattern, input.text);
    }
    assert!(glob_match(input.text, input.text), "a text matches itself");
    assert!(glob_match("*", input.text));
    assert!(
        glob_match(&format!("{}*", input.pattern), input.text)
            || !glob_match(input.pattern, input.text)
    );

    let Ok(policy) = toml::from_str::<Policy>(input.toml) else {
        return;
    };
    match policy.validate() {
        Ok(()) => {
            let action = Action::ALL[usize::from(input.action) % Action::ALL.len()];
            let target = Target::parse_resource_name(input.text).ok();
            for t in &policy.tokens {
                // A token authenticates its own holder, and so does a certificate subject
                // (names, tokens and subjects are unique).
                if let Some(token) = &t.token {
                    assert_eq!(policy.authenticate(token).map(|p| &p.name), Some(&t.name));
                }
                if let Some(subject) = &t.certificate_subject {
                    assert_eq!(
                        policy.authenticate_subject(subject).map(|p| &p.name),
                        Some(&t.name)
                    );
                }
                let narrow = t.allows(action, Some(input.pattern), target.as_ref());
                // A grant covering every command and target covers each one.
                if t.allows(action, None, None) {
                    assert!(narrow, "{action:?} allowed for all but not for one");
                }
            }
        }
        Err(e) => assert!(
            e.message.len() <= fleetcmd_fuzz::MESSAGE_MAX_BYTES,
            "a {}-byte message",
            e.message.len()
        ),
    }
});
