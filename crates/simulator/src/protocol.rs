//! The device's side of the wire (`docs/device-protocol.md`): which topics it subscribes to, how it
//! reads the topics it receives, and the update bodies it publishes.

use fleetcmd_domain::Target;
use fleetcmd_domain::topics::{RequestFormat, TopicRoot};
use serde_json::{Value as Json, json};

/// What arrived on a subscribed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Request {
        execution_id: String,
        format: RequestFormat,
    },
    Accepted {
        execution_id: String,
    },
    Rejected {
        execution_id: String,
    },
    Cancel {
        execution_id: String,
    },
}

/// `<root>/commands/<things|clients>/<id>/executions/+`: the part every topic shares.
fn executions_filter_base(root: &TopicRoot, target: &Target) -> String {
    format!(
        "{}/commands/{}/{}/executions/+",
        root.as_str(),
        target.kind.topic_segment(),
        target.id
    )
}

/// The six filters a device subscribes to (QoS 1): requests in json, cbor and raw form,
/// the accepted and rejected replies to its updates, and fleetcmd's cancel notices.
pub fn subscriptions(root: &TopicRoot, target: &Target) -> Vec<String> {
    let base = executions_filter_base(root, target);
    let mut filters: Vec<String> = root.device_request_filters(target).into();
    filters.push(format!("{base}/response/accepted/json"));
    filters.push(format!("{base}/response/rejected/json"));
    filters.push(format!("{base}/cancel/json"));
    filters
}

/// Where the device publishes its update for an execution (always JSON here).
pub fn response_topic(root: &TopicRoot, target: &Target, execution_id: &str) -> String {
    format!(
        "{}/commands/{}/{}/executions/{execution_id}/response/json",
        root.as_str(),
        target.kind.topic_segment(),
        target.id
    )
}

/// Reads a received topic. The execution id is the level right after `executions`, i.e.
/// index 5 with the default one-level root `$aws`, which is where the AWS device SDK reads
/// it (index `4 + levels(root)` in general). Topics of another device or of an unknown
/// form give `None`.
pub fn classify(root: &TopicRoot, target: &Target, topic: &str) -> Option<Inbound> {
    let root_levels = root.as_str().split('/').count();
    let levels: Vec<&str> = topic.split('/').collect();
    if levels.len() < root_levels + 6 || levels[..root_levels].join("/") != root.as_str() {
        return None;
    }
    let [commands, kind, id, executions, execution_id, rest @ ..] = &levels[root_levels..] else {
        return None;
    };
    if *commands != "commands"
        || *kind != target.kind.topic_segment()
        || *id != target.id
        || *executions != "executions"
        || execution_id.is_empty()
    {
        return None;
    }
    let execution_id = (*execution_id).to_string();
    Some(match rest {
        ["request"] => Inbound::Request {
            execution_id,
            format: RequestFormat::Raw,
        },
        ["request", "json"] => Inbound::Request {
            execution_id,
            format: RequestFormat::Json,
        },
        ["request", "cbor"] => Inbound::Request {
            execution_id,
            format: RequestFormat::Cbor,
        },
        ["response", "accepted"] | ["response", "accepted", "json" | "cbor"] => {
            Inbound::Accepted { execution_id }
        }
        ["response", "rejected"] | ["response", "rejected", "json" | "cbor"] => {
            Inbound::Rejected { execution_id }
        }
        ["cancel", "json"] => Inbound::Cancel { execution_id },
        _ => return None,
    })
}

pub fn format_name(format: RequestFormat) -> &'static str {
    match format {
        RequestFormat::Json => "json",
        RequestFormat::Cbor => "cbor",
        RequestFormat::Raw => "raw",
    }
}

/// One update a simulated device sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// `{"status":"IN_PROGRESS"}`
    InProgress,
    /// `{"status":"SUCCEEDED","result":{"ok":{"b":true}}}`
    Succeeded,
    /// `{"status":"FAILED","statusReason":{"reasonCode":"SIMULATED_FAILURE"}}`
    Failed,
    /// `{"status":"REJECTED"}`
    Rejected,
}

impl Update {
    pub fn status(self) -> &'static str {
        match self {
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
        }
    }

    pub fn body(self) -> Vec<u8> {
        let body = match self {
            Self::InProgress | Self::Rejected => json!({"status": self.status()}),
            Self::Succeeded => json!({"status": self.status(), "result": {"ok": {"b": true}}}),
            Self::Failed => json!({
                "status": self.status(),
                "statusReason": {"reasonCode": "SIMULATED_FAILURE"},
            }),
        };
        body.to_string().into_bytes()
    }
}

/// `{"error": <code>, "errorMessage": "..."}` from a rejected reply, leniently.
pub fn parse_rejected(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Json>(body) else {
        return (None, Some(String::from_utf8_lossy(body).into_owned()));
    };
    let field = |name: &str| json.get(name).and_then(Json::as_str).map(str::to_string);
    (field("error"), field("errorMessage"))
}

/// Whether a `/rejected` error code invites the device to send the same update again
/// (AWS documents InternalError, DataConflict and RequestThrottled as retryable; see
/// `docs/device-protocol.md`, Replies).
pub fn is_retryable_error(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("InternalError" | "DataConflict" | "RequestThrottled")
    )
}

/// The reason code of a cancel notice, if it has one.
pub fn parse_cancel_reason(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Json>(body)
        .ok()?
        .get("statusReason")?
        .get("reasonCode")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lamp() -> Target {
        Target::thing("lamp").unwrap()
    }

    #[test]
    fn subscriptions_cover_requests_replies_and_cancels() {
        let subs = subscriptions(&TopicRoot::default(), &Target::client("c-1").unwrap());
        assert_eq!(
            subs,
            vec![
                "$aws/commands/clients/c-1/executions/+/request/json",
                "$aws/commands/clients/c-1/executions/+/request/cbor",
                "$aws/commands/clients/c-1/executions/+/request",
                "$aws/commands/clients/c-1/executions/+/response/accepted/json",
                "$aws/commands/clients/c-1/executions/+/response/rejected/json",
                "$aws/commands/clients/c-1/executions/+/cancel/json",
            ]
        );
        assert_eq!(
            response_topic(&TopicRoot::default(), &lamp(), "e-1"),
            "$aws/commands/things/lamp/executions/e-1/response/json"
        );
    }

    #[test]
    fn classifies_received_topics() {
        let root = TopicRoot::default();
        let t = lamp();
        let base = "$aws/commands/things/lamp/executions/e-1";
        let req = |format| Inbound::Request {
            execution_id: "e-1".into(),
            format,
        };
        assert_eq!(
            classify(&root, &t, &format!("{base}/request/json")),
            Some(req(RequestFormat::Json))
        );
        assert_eq!(
            classify(&root, &t, &format!("{base}/request/cbor")),
            Some(req(RequestFormat::Cbor))
        );
        assert_eq!(
            classify(&root, &t, &format!("{base}/request")),
            Some(req(RequestFormat::Raw))
        );
        assert_eq!(
            classify(&root, &t, &format!("{base}/response/accepted/json")),
            Some(Inbound::Accepted {
                execution_id: "e-1".into()
            })
        );
        assert_eq!(
            classify(&root, &t, &format!("{base}/response/rejected/json")),
            Some(Inbound::Rejected {
                execution_id: "e-1".into()
            })
        );
        assert_eq!(
            classify(&root, &t, &format!("{base}/cancel/json")),
            Some(Inbound::Cancel {
                execution_id: "e-1".into()
            })
        );
        // The execution id is topic level 5 with the default root, as the SDK reads it.
        let topic = format!("{base}/request/json");
        assert_eq!(topic.split('/').nth(5), Some("e-1"));
        for other in [
            format!("{base}/request/xml"),
            format!("{base}/response/json"),
            "$aws/commands/things/other/executions/e-1/request/json".to_string(),
            "$aws/commands/clients/lamp/executions/e-1/request/json".to_string(),
            "fleet/commands/things/lamp/executions/e-1/request/json".to_string(),
            "$aws/commands/things/lamp/executions//request".to_string(),
            "$aws/commands/things/lamp".to_string(),
        ] {
            assert_eq!(classify(&root, &t, &other), None, "{other}");
        }
    }

    #[test]
    fn custom_roots_shift_the_execution_level() {
        let root = TopicRoot::new("fleet/prod").unwrap();
        let t = lamp();
        assert_eq!(
            classify(
                &root,
                &t,
                "fleet/prod/commands/things/lamp/executions/e-9/request"
            ),
            Some(Inbound::Request {
                execution_id: "e-9".into(),
                format: RequestFormat::Raw
            })
        );
        assert_eq!(
            classify(
                &root,
                &t,
                "$aws/commands/things/lamp/executions/e-9/request"
            ),
            None
        );
        assert_eq!(
            subscriptions(&root, &t)[5],
            "fleet/prod/commands/things/lamp/executions/+/cancel/json"
        );
    }

    #[test]
    fn update_bodies_match_the_reference_shape() {
        let parse = |u: Update| serde_json::from_slice::<Json>(&u.body()).unwrap();
        assert_eq!(
            parse(Update::Succeeded),
            json!({"status": "SUCCEEDED", "result": {"ok": {"b": true}}})
        );
        assert_eq!(
            parse(Update::Failed),
            json!({"status": "FAILED", "statusReason": {"reasonCode": "SIMULATED_FAILURE"}})
        );
        assert_eq!(parse(Update::Rejected), json!({"status": "REJECTED"}));
        assert_eq!(parse(Update::InProgress), json!({"status": "IN_PROGRESS"}));
    }

    #[test]
    fn replies_are_read_leniently() {
        assert_eq!(
            parse_rejected(
                br#"{"error":"TerminalStateReached","errorMessage":"done","executionId":"e"}"#
            ),
            (Some("TerminalStateReached".into()), Some("done".into()))
        );
        assert_eq!(parse_rejected(b"garbage"), (None, Some("garbage".into())));
        assert_eq!(
            parse_cancel_reason(br#"{"executionId":"e","status":"CANCELED","statusReason":{"reasonCode":"$CANCELED"}}"#),
            Some("$CANCELED".into())
        );
        assert_eq!(parse_cancel_reason(br#"{"executionId":"e"}"#), None);
        assert!(is_retryable_error(Some("InternalError")));
        assert!(is_retryable_error(Some("DataConflict")));
        assert!(!is_retryable_error(Some("TerminalStateReached")));
        assert!(!is_retryable_error(None));
    }
}
