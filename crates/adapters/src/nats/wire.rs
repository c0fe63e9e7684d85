//! What crosses the wire: connection events, server URLs (and keeping credentials out of
//! messages), error mapping, headers, and the subject rules shared with the in-process bus.

use std::str::FromStr;

use async_nats::{
    ConnectErrorKind, HeaderMap, HeaderName, HeaderValue, PublishErrorKind, ServerAddr,
    SubscribeErrorKind,
};
use fleetcmd_domain::ports::{BusMessage, PortError, PortResult};
use tokio::sync::watch;

use super::ConnectionState;

pub(super) fn on_event(
    state: &watch::Sender<ConnectionState>,
    name: &str,
    event: async_nats::Event,
) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            state.send_replace(ConnectionState::Connected);
            tracing::info!(client = name, "nats: connected");
        }
        Event::Disconnected => {
            state.send_replace(ConnectionState::Disconnected);
            tracing::warn!(client = name, "nats: disconnected; reconnecting");
        }
        Event::Closed => {
            state.send_replace(ConnectionState::Closed);
            tracing::info!(client = name, "nats: connection closed");
        }
        Event::SlowConsumer(sid) => tracing::warn!(
            client = name,
            sid,
            "nats: a subscription is full; messages for it are dropped (slow consumer)"
        ),
        Event::LameDuckMode => tracing::warn!(
            client = name,
            "nats: the server is entering lame duck mode (shutting down)"
        ),
        Event::ServerError(e) => tracing::warn!(client = name, error = %e, "nats: server error"),
        Event::ClientError(e) => tracing::debug!(client = name, error = %e, "nats: client error"),
        Event::Draining => tracing::debug!(client = name, "nats: draining"),
    }
}

pub(super) fn parse_servers(url: &str) -> PortResult<Vec<ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            ServerAddr::from_str(s).map_err(|e| {
                PortError::Backend(format!("nats: invalid server url {:?}: {e}", redact_url(s)))
            })
        })
        .collect::<PortResult<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(PortError::Backend(format!(
            "nats: no server in url {:?}",
            redact_url(url)
        )));
    }
    Ok(servers)
}

/// `url` without credentials (`nats://user:pass@host` → `nats://***@host`), for messages.
pub(super) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|part| match (part.find("://"), part.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &part[..scheme + 3], &part[at..])
            }
            (None, Some(at)) => format!("***{}", &part[at..]),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn connect_error(url: &str, e: &async_nats::ConnectError) -> PortError {
    let msg = format!("nats: connect to {}: {e}", redact_url(url));
    match e.kind() {
        ConnectErrorKind::Dns
        | ConnectErrorKind::TimedOut
        | ConnectErrorKind::Io
        | ConnectErrorKind::MaxReconnects => PortError::Unavailable(msg),
        // Configuration: fixing it takes a person, not a retry.
        ConnectErrorKind::ServerParse
        | ConnectErrorKind::Authentication
        | ConnectErrorKind::AuthorizationViolation
        | ConnectErrorKind::Tls => PortError::Backend(msg),
    }
}

pub(super) fn publish_error(subject: &str, e: &async_nats::PublishError) -> PortError {
    let msg = format!("nats: publish {subject}: {e}");
    match e.kind() {
        // The client's connection task is gone (drained or closed).
        PublishErrorKind::Send => PortError::Unavailable(msg),
        PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject => {
            PortError::Backend(msg)
        }
    }
}

pub(super) fn subscribe_error(subject: &str, e: &async_nats::SubscribeError) -> PortError {
    let msg = format!("nats: subscribe {subject}: {e}");
    match e.kind() {
        SubscribeErrorKind::Other => PortError::Unavailable(msg),
        SubscribeErrorKind::InvalidSubject | SubscribeErrorKind::InvalidQueueName => {
            PortError::Backend(msg)
        }
    }
}

pub(super) fn from_nats(m: async_nats::Message) -> BusMessage {
    BusMessage {
        subject: m.subject.to_string(),
        reply: m.reply.map(|r| r.to_string()),
        headers: from_headers(m.headers.as_ref()),
        payload: m.payload,
    }
}

/// Headers in name order; the values of a repeated name keep their order (stable sort).
fn from_headers(headers: Option<&HeaderMap>) -> Vec<(String, String)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// NATS headers for `headers`, or `None` when there are none; refuses what NATS would alter.
pub(super) fn to_headers(headers: &[(String, String)]) -> PortResult<Option<HeaderMap>> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if name.is_empty() {
            return Err(PortError::Backend(
                "nats: invalid header: empty name".to_owned(),
            ));
        }
        let header = HeaderName::from_str(name).map_err(|_| {
            PortError::Backend(format!(
                "nats: invalid header name {name:?}: printable ASCII without ':' only"
            ))
        })?;
        if value.contains(['\r', '\n']) || value.trim() != value {
            return Err(PortError::Backend(format!(
                "nats: invalid value for header {name:?}: {value:?} (no CR/LF, no leading or trailing whitespace)"
            )));
        }
        map.append(header, HeaderValue::from(value.as_str()));
    }
    Ok(Some(map))
}

fn has_whitespace(s: &str) -> bool {
    s.contains([' ', '\t', '\r', '\n'])
}

/// Checks a publish (or reply) subject: non-empty tokens, no wildcards, no whitespace.
pub(super) fn check_subject(subject: &str) -> PortResult<()> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !has_whitespace(t));
    if ok {
        Ok(())
    } else {
        Err(PortError::Backend(format!(
            "invalid publish subject {subject:?}: tokens must be non-empty, without wildcards or whitespace"
        )))
    }
}

/// Checks a subscription subject: non-empty tokens, `>` only last, no whitespace.
pub(super) fn check_filter(subject: &str) -> PortResult<()> {
    let count = subject.split('.').count();
    for (i, t) in subject.split('.').enumerate() {
        let why = if t.is_empty() {
            "empty token"
        } else if t == ">" && i + 1 != count {
            "'>' must be the last token"
        } else if has_whitespace(t) {
            "whitespace"
        } else {
            continue;
        };
        return Err(PortError::Backend(format!(
            "invalid subject {subject:?}: {why}"
        )));
    }
    Ok(())
}

pub(super) fn check_queue_group(group: &str) -> PortResult<()> {
    if group.is_empty() || has_whitespace(group) {
        return Err(PortError::Backend(format!(
            "invalid queue group {group:?}: must be non-empty, without whitespace"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_in_process_rules() {
        for ok in ["a", "a.b", "$aws.x", "a-b_c.d"] {
            assert!(check_subject(ok).is_ok(), "{ok:?}");
            assert!(check_filter(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a.\tb"] {
            assert!(check_subject(bad).is_err(), "publish {bad:?}");
        }
        for ok in ["a.*", "a.>", ">", "*.b.>", "*"] {
            assert!(check_filter(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "a..b", "a.>.b", "a b", ".a", "a."] {
            assert!(check_filter(bad).is_err(), "subscribe {bad:?}");
        }
        assert!(check_queue_group("g").is_ok());
        assert!(check_queue_group("").is_err());
        assert!(check_queue_group("a b").is_err());
    }

    #[test]
    fn headers_map_both_ways_in_name_order() {
        let sent = vec![
            ("traceparent".to_owned(), "00-abc-01".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "first".to_owned()),
            ("a".to_owned(), "second".to_owned()),
            ("empty".to_owned(), String::new()),
            ("utf8".to_owned(), "é ü".to_owned()),
        ];
        let map = to_headers(&sent).expect("valid").expect("some");
        let back = from_headers(Some(&map));
        let mut expected = sent.clone();
        expected.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(back, expected);
        assert_eq!(to_headers(&[]).expect("empty"), None);
        assert!(from_headers(None).is_empty());
    }

    #[test]
    fn headers_that_nats_would_alter_are_refused() {
        let one = |n: &str, v: &str| to_headers(&[(n.to_owned(), v.to_owned())]);
        for (n, v) in [
            ("", "x"),
            ("a:b", "x"),
            ("a b", "x"),
            ("é", "x"),
            ("k", "a\r\nb"),
            ("k", " lead"),
            ("k", "trail "),
        ] {
            let err = one(n, v).expect_err("must be refused");
            assert!(
                matches!(err, PortError::Backend(_)) && !err.is_retryable(),
                "{n:?}: {v:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            redact_url("nats://user:secret@a:4222,nats://b:4222,tok@c:4222"),
            "nats://***@a:4222,nats://b:4222,***@c:4222"
        );
        let err = parse_servers("nats://user:secret@[::1").expect_err("bad url");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn server_urls_are_parsed() {
        assert_eq!(
            parse_servers("nats://127.0.0.1:4222").expect("one").len(),
            1
        );
        assert_eq!(
            parse_servers("nats://a:4222, nats://b:4222")
                .expect("two")
                .len(),
            2
        );
        assert!(matches!(parse_servers(""), Err(PortError::Backend(_))));
        assert!(matches!(
            parse_servers("http://a:4222"),
            Err(PortError::Backend(_))
        ));
    }
}
