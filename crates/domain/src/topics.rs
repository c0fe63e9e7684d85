//! MQTT topics of the device protocol (`docs/device-protocol.md`, Topics), built and parsed.
//!
//! ```text
//! <root>/commands/{things|clients}/<id>/executions/<executionId>/request[/json|/cbor]
//! <root>/commands/{things|clients}/<id>/executions/<executionId>/response/{json|cbor}
//! <root>/commands/{things|clients}/<id>/executions/<executionId>/response/{accepted|rejected}[/json|/cbor]
//! <root>/commands/{things|clients}/<id>/executions/<executionId>/cancel/json     (fleetcmd)
//! <root>/events/commandExecution/<commandId>/<status>
//! ```

use crate::error::{Rejection, RejectionCode, quote};
use crate::ids::{ExecutionId, Target, TargetKind};
use crate::model::ExecutionStatus;

/// The default topic root.
pub const DEFAULT_ROOT: &str = "$aws";

/// The wire format of a request topic, chosen from the payload's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestFormat {
    Json,
    Cbor,
    /// Any other content type: the suffix-less topic.
    Raw,
}

impl RequestFormat {
    /// `application/json` → json, `application/cbor` → cbor, anything else → raw.
    /// Parameters such as `; charset=utf-8` are ignored, and the match is case-insensitive.
    pub fn from_content_type(content_type: &str) -> Self {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/json") {
            Self::Json
        } else if essence.eq_ignore_ascii_case("application/cbor") {
            Self::Cbor
        } else {
            Self::Raw
        }
    }
}

/// The format of a device update (and of the reply to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum UpdateFormat {
    Json,
    Cbor,
}

impl UpdateFormat {
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Cbor => "cbor",
        }
    }
}

/// A validated topic root (non-empty, no wildcards, no leading or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoot(String);

impl Default for TopicRoot {
    fn default() -> Self {
        Self(DEFAULT_ROOT.to_string())
    }
}

impl TopicRoot {
    pub fn new(root: impl Into<String>) -> Result<Self, crate::ValidationError> {
        let root = root.into();
        if root.is_empty()
            || root.starts_with('/')
            || root.ends_with('/')
            || root.contains(['+', '#', '\0'])
            || root.split('/').any(str::is_empty)
        {
            return Err(crate::ValidationError::new(
                "topic_root",
                "must be non-empty MQTT topic levels without wildcards or empty levels (e.g. $aws)",
            ));
        }
        Ok(Self(root))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn execution_base(&self, target: &Target, execution_id: &ExecutionId) -> String {
        format!(
            "{}/commands/{}/{}/executions/{}",
            self.0,
            target.kind.topic_segment(),
            target.id,
            execution_id
        )
    }

    /// Where the request for an execution is published.
    pub fn request(
        &self,
        target: &Target,
        execution_id: &ExecutionId,
        format: RequestFormat,
    ) -> String {
        let base = self.execution_base(target, execution_id);
        match format {
            RequestFormat::Json => format!("{base}/request/json"),
            RequestFormat::Cbor => format!("{base}/request/cbor"),
            RequestFormat::Raw => format!("{base}/request"),
        }
    }

    /// Where the reply to a device update goes.
    pub fn reply(
        &self,
        target: &Target,
        execution_id: &ExecutionId,
        accepted: bool,
        format: UpdateFormat,
    ) -> String {
        format!(
            "{}/response/{}/{}",
            self.execution_base(target, execution_id),
            if accepted { "accepted" } else { "rejected" },
            format.suffix()
        )
    }

    /// Where a device is told that its execution was canceled (fleetcmd's addition).
    pub fn cancel(&self, target: &Target, execution_id: &ExecutionId) -> String {
        format!("{}/cancel/json", self.execution_base(target, execution_id))
    }

    /// The status-change event topic.
    pub fn event(&self, command_id: &str, status: ExecutionStatus) -> String {
        format!(
            "{}/events/commandExecution/{}/{}",
            self.0,
            command_id,
            status.as_str()
        )
    }

    /// The filters the edge subscribes to for device updates.
    pub fn update_filters(&self) -> [String; 2] {
        [
            format!("{}/commands/+/+/executions/+/response/json", self.0),
            format!("{}/commands/+/+/executions/+/response/cbor", self.0),
        ]
    }

    /// The filters a device subscribes to for its requests (json, cbor and raw).
    pub fn device_request_filters(&self, target: &Target) -> [String; 3] {
        let base = format!(
            "{}/commands/{}/{}/executions/+",
            self.0,
            target.kind.topic_segment(),
            target.id
        );
        [
            format!("{base}/request/json"),
            format!("{base}/request/cbor"),
            format!("{base}/request"),
        ]
    }

    /// The target whose requests a subscription to `filter` receives: `filter` names one
    /// target (`<root>/commands/<things|clients>/<id>/executions/...`, no wildcard there) and
    /// matches the request topics of any execution of it (`+/request/#`, `+/request/json`,
    /// `#`, ...). `None` for any other filter, a filter of many targets included: such a
    /// subscriber is not a device waiting for its own commands.
    pub fn request_subscriber(&self, filter: &str) -> Option<Target> {
        let rest = filter
            .strip_prefix(self.0.as_str())?
            .strip_prefix("/commands/")?;
        let mut levels = rest.splitn(4, '/');
        let kind = match levels.next()? {
            "things" => TargetKind::Thing,
            "clients" => TargetKind::Client,
            _ => return None,
        };
        let id = levels.next()?;
        if levels.next()? != "executions" || id.contains(['+', '#']) {
            return None;
        }
        let tail = levels.next()?;
        // Any execution id: a filter that matches the request of an id no execution has
        // matches them all (ids hold no `/`).
        let matches_requests = ["json", "cbor"]
            .iter()
            .any(|format| filter_matches(tail, &format!("\0/request/{format}")))
            || filter_matches(tail, "\0/request");
        if !matches_requests {
            return None;
        }
        Target::new(kind, id).ok()
    }

    /// Parses the topic of a device update: `<root>/commands/<kind>/<id>/executions/<eid>/response/<fmt>`.
    pub fn parse_update(
        &self,
        topic: &str,
    ) -> Result<(Target, ExecutionId, UpdateFormat), Rejection> {
        let bad = |why: &str| {
            Rejection::new(
                RejectionCode::InvalidTopic,
                format!("topic {}: {why}", quote(topic)),
            )
        };
        let rest = topic
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix("/commands/"))
            .ok_or_else(|| bad(&format!("expected prefix {}/commands/", self.0)))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [kind, id, executions, execution_id, response, format] = parts.as_slice() else {
            return Err(bad(
                "expected <kind>/<id>/executions/<executionId>/response/<json|cbor>",
            ));
        };
        let kind = match *kind {
            "things" => TargetKind::Thing,
            "clients" => TargetKind::Client,
            other => {
                return Err(bad(&format!(
                    "unknown target kind {}, expected things or clients",
                    quote(other)
                )));
            }
        };
        if *executions != "executions" || *response != "response" {
            return Err(bad(
                "expected <kind>/<id>/executions/<executionId>/response/<json|cbor>",
            ));
        }
        let format = match *format {
            "json" => UpdateFormat::Json,
            "cbor" => UpdateFormat::Cbor,
            other => {
                return Err(bad(&format!(
                    "unknown format {}, expected json or cbor",
                    quote(other)
                )));
            }
        };
        let target = Target::new(kind, *id).map_err(|e| bad(&e.to_string()))?;
        let execution_id = ExecutionId::parse(*execution_id).map_err(|e| bad(&e.to_string()))?;
        Ok((target, execution_id, format))
    }
}

/// Whether the MQTT topic filter `filter` matches `topic` (`+` one level, `#` the rest, at
/// the end only).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_of_one_targets_requests_names_that_target() {
        let root = TopicRoot::default();
        let lamp = Target::thing("lamp-1").unwrap();
        for filter in [
            "$aws/commands/things/lamp-1/executions/+/request/#",
            "$aws/commands/things/lamp-1/executions/+/request/json",
            "$aws/commands/things/lamp-1/executions/+/request",
            "$aws/commands/things/lamp-1/executions/#",
            "$aws/commands/things/lamp-1/executions/+/#",
        ] {
            assert_eq!(
                root.request_subscriber(filter),
                Some(lamp.clone()),
                "{filter}"
            );
        }
        assert_eq!(
            root.request_subscriber("$aws/commands/clients/sensor-7/executions/+/request/cbor"),
            Some(Target::client("sensor-7").unwrap())
        );
        for filter in [
            "$aws/commands/things/+/executions/+/request/#",
            "$aws/commands/things/#",
            "$aws/commands/things/lamp-1/executions/+/response/#",
            "$aws/commands/things/lamp-1/executions/e-1/request/json",
            "$aws/commands/things/lamp-1/executions",
            "$aws/commands/devices/lamp-1/executions/+/request/#",
            "other/commands/things/lamp-1/executions/+/request/#",
            "#",
        ] {
            assert_eq!(root.request_subscriber(filter), None, "{filter}");
        }
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }
    use proptest::prelude::*;

    fn root() -> TopicRoot {
        TopicRoot::default()
    }

    #[test]
    fn refusals_quote_huge_topics_cut() {
        let huge = "t".repeat(100_000);
        for topic in [
            huge.clone(),
            format!("$aws/commands/{huge}/x/executions/e/response/json"),
            format!("$aws/commands/things/x/executions/e/response/{huge}"),
            format!("$aws/commands/things/{huge}/executions/e/response/json"),
        ] {
            let e = root().parse_update(&topic).unwrap_err();
            assert_eq!(e.code, RejectionCode::InvalidTopic);
            assert!(e.message.len() < 400, "{}", e.message.len());
            assert!(e.message.contains("characters)"), "{}", e.message);
        }
    }

    #[test]
    fn request_suffix_follows_content_type() {
        let t = Target::thing("lamp").unwrap();
        let e = ExecutionId::parse("e-1").unwrap();
        assert_eq!(
            root().request(&t, &e, RequestFormat::from_content_type("application/json")),
            "$aws/commands/things/lamp/executions/e-1/request/json"
        );
        assert_eq!(
            root().request(&t, &e, RequestFormat::from_content_type("Application/CBOR")),
            "$aws/commands/things/lamp/executions/e-1/request/cbor"
        );
        assert_eq!(
            root().request(
                &t,
                &e,
                RequestFormat::from_content_type("application/json; charset=utf-8")
            ),
            "$aws/commands/things/lamp/executions/e-1/request/json"
        );
        assert_eq!(
            root().request(&t, &e, RequestFormat::from_content_type("text/plain")),
            "$aws/commands/things/lamp/executions/e-1/request"
        );
        assert_eq!(
            root().request(&t, &e, RequestFormat::from_content_type("")),
            "$aws/commands/things/lamp/executions/e-1/request"
        );
    }

    #[test]
    fn reply_event_and_cancel_topics() {
        let t = Target::client("c1").unwrap();
        let e = ExecutionId::parse("e").unwrap();
        assert_eq!(
            root().reply(&t, &e, true, UpdateFormat::Json),
            "$aws/commands/clients/c1/executions/e/response/accepted/json"
        );
        assert_eq!(
            root().reply(&t, &e, false, UpdateFormat::Cbor),
            "$aws/commands/clients/c1/executions/e/response/rejected/cbor"
        );
        assert_eq!(
            root().cancel(&t, &e),
            "$aws/commands/clients/c1/executions/e/cancel/json"
        );
        assert_eq!(
            root().event("reboot", ExecutionStatus::TimedOut),
            "$aws/events/commandExecution/reboot/TIMED_OUT"
        );
    }

    #[test]
    fn parse_rejects_malformed_topics() {
        let r = root();
        for bad in [
            "$aws/commands/things/x/executions/e/response",
            "$aws/commands/devices/x/executions/e/response/json",
            "$aws/commands/things/x/executions/e/response/xml",
            "$aws/commands/things/x/executions/e/request/json",
            "$aws/commands/things/x/executions/e/response/accepted/json",
            "$aws/commands/things/x/executions/e!/response/json",
            "other/commands/things/x/executions/e/response/json",
            "$aws/commands/things//executions/e/response/json",
        ] {
            let err = r.parse_update(bad).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidTopic, "{bad}");
        }
    }

    #[test]
    fn custom_roots_are_validated() {
        assert!(TopicRoot::new("fleet/prod").is_ok());
        for bad in ["", "/x", "x/", "a//b", "a/+", "#"] {
            assert!(TopicRoot::new(bad).is_err(), "{bad}");
        }
        let r = TopicRoot::new("fleet/prod").unwrap();
        let t = Target::thing("a").unwrap();
        let e = ExecutionId::parse("b").unwrap();
        let topic = format!(
            "{}/commands/things/a/executions/b/response/json",
            r.as_str()
        );
        assert_eq!(r.parse_update(&topic).unwrap(), (t, e, UpdateFormat::Json));
    }

    proptest! {
        #[test]
        fn update_topics_round_trip(id in "[a-zA-Z0-9:_-]{1,128}", eid in "[a-zA-Z0-9_-]{1,64}", thing in any::<bool>(), cbor in any::<bool>()) {
            let t = if thing { Target::thing(id).unwrap() } else { Target::client(id).unwrap() };
            let e = ExecutionId::parse(eid).unwrap();
            let f = if cbor { UpdateFormat::Cbor } else { UpdateFormat::Json };
            let topic = format!("$aws/commands/{}/{}/executions/{}/response/{}", t.kind.topic_segment(), t.id, e, f.suffix());
            prop_assert_eq!(root().parse_update(&topic).unwrap(), (t, e, f));
        }
    }
}
