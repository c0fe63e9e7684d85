//! Subject rules: `.`-separated tokens; a subscription may use `*` (exactly one token) and a
//! trailing `>` (one or more tokens), a publish may not. The NATS adapter checks subjects the
//! same way, so a bad subject fails alike on both buses.

use fleetcmd_domain::ports::{PortError, PortResult};

/// A parsed wildcard subscription subject.
pub(super) struct Pattern {
    tokens: Vec<Token>,
}

enum Token {
    Literal(String),
    /// `*`
    One,
    /// `>` (always last)
    Rest,
}

impl Pattern {
    pub(super) fn matches(&self, subject: &str) -> bool {
        let mut parts = subject.split('.');
        for t in &self.tokens {
            match t {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Checks a subscription subject; returns its pattern when it has wildcards.
pub(super) fn parse_filter(subject: &str) -> PortResult<Option<Pattern>> {
    let invalid = |why: &str| PortError::Backend(format!("invalid subject {subject:?}: {why}"));
    let count = subject.split('.').count();
    let mut tokens = Vec::with_capacity(count);
    let mut wild = false;
    for (i, t) in subject.split('.').enumerate() {
        tokens.push(match t {
            "" => return Err(invalid("empty token")),
            "*" => {
                wild = true;
                Token::One
            }
            ">" if i + 1 == count => {
                wild = true;
                Token::Rest
            }
            ">" => return Err(invalid("'>' must be the last token")),
            t if t.contains([' ', '\t', '\r', '\n']) => return Err(invalid("whitespace")),
            t => Token::Literal(t.to_owned()),
        });
    }
    Ok(wild.then_some(Pattern { tokens }))
}

/// Checks a publish subject: tokens non-empty, no wildcards.
pub(super) fn check_subject(subject: &str) -> PortResult<()> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains([' ', '\t', '\r', '\n']));
    if ok {
        Ok(())
    } else {
        Err(PortError::Backend(format!(
            "invalid publish subject {subject:?}: tokens must be non-empty, without wildcards or whitespace"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_nats_semantics() {
        let p = |s: &str| parse_filter(s).expect("valid").expect("wildcard");
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.b.c"));
        assert!(!p("a.*").matches("a"));
        assert!(p("a.>").matches("a.b"));
        assert!(p("a.>").matches("a.b.c.d"));
        assert!(!p("a.>").matches("a"));
        assert!(p(">").matches("x"));
        assert!(p("*.b.>").matches("a.b.c"));
        assert!(!p("*.b.>").matches("a.c.c"));
        assert!(parse_filter("a.b").expect("valid").is_none());
        assert!(parse_filter("a.>.b").is_err());
        assert!(parse_filter("a..b").is_err());
        assert!(parse_filter("").is_err());
        assert!(check_subject("a.*").is_err());
        assert!(check_subject("a.b").is_ok());
    }
}
