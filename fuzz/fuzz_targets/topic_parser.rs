//! Topic and id parsing on arbitrary strings: `TopicRoot::new` and `parse_update` (under the
//! default root and under an arbitrary one), `RequestFormat::from_content_type`, the id and
//! target parsers and `ExecutionStatus::parse`. Whatever parses must rebuild to the same
//! string, and the builders' topics must parse back to what built them.
#![no_main]

use arbitrary::Arbitrary;
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::ExecutionStatus;
use fleetcmd_domain::topics::{RequestFormat, TopicRoot, UpdateFormat};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    root: &'a str,
    topic: &'a str,
    /// Also an id, a resource name, a status and a content type.
    text: &'a str,
}

fn check_root(root: &TopicRoot, topic: &str) {
    match root.parse_update(topic) {
        Ok((target, execution_id, format)) => {
            let rebuilt = format!(
                "{}/commands/{}/{}/executions/{}/response/{}",
                root.as_str(),
                target.kind.topic_segment(),
                target.id,
                execution_id,
                format.suffix()
            );
            assert_eq!(rebuilt, topic, "a parsed update topic does not rebuild");
            assert_eq!(
                Target::new(target.kind, target.id.clone()),
                Ok(target.clone())
            );
            // Builders agree with the parser on every other topic of this execution.
            for other in [
                root.reply(&target, &execution_id, true, format),
                root.request(&target, &execution_id, RequestFormat::Json),
                root.cancel(&target, &execution_id),
            ] {
                assert!(other.starts_with(root.as_str()));
                assert!(
                    root.parse_update(&other).is_err(),
                    "{other} is not an update"
                );
            }
        }
        Err(r) => {
            // The topic is quoted cut: the message holds at most the root in full.
            assert!(
                r.message.len() <= fleetcmd_fuzz::MESSAGE_MAX_BYTES + 2 * root.as_str().len(),
                "a {}-byte message",
                r.message.len()
            );
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    check_root(&TopicRoot::default(), input.topic);
    if let Ok(root) = TopicRoot::new(input.root) {
        assert_eq!(root.as_str(), input.root);
        check_root(&root, input.topic);
        // A topic built for any valid target and id parses back to them.
        if let (Ok(target), Ok(id)) = (
            Target::thing(input.text).or_else(|_| Target::client(input.text)),
            ExecutionId::parse(input.text),
        ) {
            for format in [UpdateFormat::Json, UpdateFormat::Cbor] {
                let topic = format!(
                    "{}/commands/{}/{}/executions/{}/response/{}",
                    root.as_str(),
                    target.kind.topic_segment(),
                    target.id,
                    id,
                    format.suffix()
                );
                assert_eq!(
                    root.parse_update(&topic).ok(),
                    Some((target.clone(), id.clone(), format)),
                    "{topic}"
                );
            }
        }
    }

    let format = RequestFormat::from_content_type(input.text);
    let essence = input.text.split(';').next().unwrap_or("").trim();
    let expected = if essence.eq_ignore_ascii_case("application/json") {
        RequestFormat::Json
    } else if essence.eq_ignore_ascii_case("application/cbor") {
        RequestFormat::Cbor
    } else {
        RequestFormat::Raw
    };
    assert_eq!(format, expected);

    if let Ok(id) = CommandId::parse(input.text) {
        assert_eq!(id.as_str(), input.text);
    }
    if let Ok(id) = ExecutionId::parse(input.text) {
        assert_eq!(id.as_str(), input.text);
        assert!(!id.as_str().is_empty() && id.as_str().len() <= 64);
    }
    match Target::parse_resource_name(input.text) {
        Ok(target) => assert_eq!(target.resource_name(), input.text),
        Err(e) => assert!(e.to_string().len() <= fleetcmd_fuzz::MESSAGE_MAX_BYTES),
    }
    if let Some(status) = ExecutionStatus::parse(input.text) {
        assert_eq!(status.as_str(), input.text);
    }
});
