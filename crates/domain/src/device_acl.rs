//! What an authenticated device may touch on the broker, the AWS IoT way: a device acting
//! as `things/<name>` (or `clients/<id>`) subscribes only below its own
//! `<root>/commands/<kind>/<id>/executions/` (its requests, the replies to its updates, its
//! cancels) and publishes only its own updates, `.../executions/<id>/response/{json,cbor}`.
//! Everything else — other devices' topics, `$aws/events/...`, wildcards above its own
//! prefix, shared subscriptions — is refused.
//!
//! Pure functions of the identity and the topic, so the embedded broker's hooks, the
//! Mosquitto ACL file we ship and the fuzzers agree on one rule.

use crate::ids::Target;
use crate::topics::TopicRoot;

/// The identity as a device states it (`things/lamp-1`, `clients/sensor-7`): the MQTT
/// username of a password login, the subject CN of a fleetcmd certificate, and the topic
/// segment its executions live under.
pub fn identity_string(identity: &Target) -> String {
    format!("{}/{}", identity.kind.topic_segment(), identity.id)
}

/// Reads an identity string; `None` when it is not one.
pub fn parse_identity(s: &str) -> Option<Target> {
    match s.split_once('/')? {
        ("things", name) => Target::thing(name).ok(),
        ("clients", id) => Target::client(id).ok(),
        _ => None,
    }
}

/// The topic prefix every topic of the device's executions starts with.
pub fn own_prefix(root: &TopicRoot, identity: &Target) -> String {
    format!(
        "{}/commands/{}/executions/",
        root.as_str(),
        identity_string(identity)
    )
}

/// Whether `identity` may subscribe to `filter`: the filter must lie wholly below the
/// device's own executions prefix (wildcards only after it), so it can match no other
/// device's topic.
pub fn may_subscribe(root: &TopicRoot, identity: &Target, filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix(&own_prefix(root, identity)) else {
        return false;
    };
    // `.../executions/#` is fine; an empty remainder (a filter ending in `/`) is a topic
    // no one publishes, and MQTT allows it: harmless either way, so refused for clarity.
    !rest.is_empty() && well_formed_filter(rest)
}

/// Whether `filter` lies wholly below `<root>/events/`: what an identity the operator named
/// an event reader may subscribe to besides its own topics (status-change events of every
/// command; nothing it could publish on).
pub fn is_event_filter(root: &TopicRoot, filter: &str) -> bool {
    filter
        .strip_prefix(&format!("{}/events/", root.as_str()))
        .is_some_and(|rest| !rest.is_empty() && well_formed_filter(rest))
}

/// `+` and `#` only as whole levels, `#` only last (what the broker would refuse anyway;
/// checked so the rule does not depend on the broker's parser).
fn well_formed_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Whether `identity` may publish on `topic`: only an update of one of its own executions,
/// `.../executions/<execution id>/response/json` or `.../response/cbor`.
pub fn may_publish(root: &TopicRoot, identity: &Target, topic: &str) -> bool {
    is_own_update(&own_prefix(root, identity), topic)
}

/// [`may_publish`] for an identity whose [`own_prefix`] is `prefix`, without allocating: the
/// broker keeps each connection's prefix and asks this for every publish. Whether the
/// execution id is well formed is the edge's to answer (on the device's own reply topic).
pub fn is_own_update(prefix: &str, topic: &str) -> bool {
    let Some((execution, suffix)) = topic.strip_prefix(prefix).and_then(|r| r.split_once('/'))
    else {
        return false;
    };
    !execution.is_empty()
        && !execution.contains(['+', '#'])
        && matches!(suffix, "response/json" | "response/cbor")
}

/// Whether a device acting as `identity` may use `client_id`: a bare client identity must
/// connect with its own client id; a thing may use any (AWS's thing policies usually pin it
/// to the thing name, but devices with several connections exist).
pub fn may_use_client_id(identity: &Target, client_id: &str) -> bool {
    match identity.kind {
        crate::ids::TargetKind::Client => identity.id == client_id,
        crate::ids::TargetKind::Thing => !client_id.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lamp() -> Target {
        Target::thing("lamp-1").unwrap()
    }

    #[test]
    fn identities_round_trip_and_garbage_is_none() {
        for t in [lamp(), Target::client("sensor-7").unwrap()] {
            assert_eq!(parse_identity(&identity_string(&t)), Some(t));
        }
        for bad in [
            "",
            "lamp-1",
            "thing/lamp-1",
            "things/",
            "things/a b",
            "clients/a+b",
        ] {
            assert_eq!(parse_identity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_device_subscribes_only_below_its_own_executions() {
        let root = TopicRoot::default();
        let ok = [
            "$aws/commands/things/lamp-1/executions/+/request/#",
            "$aws/commands/things/lamp-1/executions/+/request/json",
            "$aws/commands/things/lamp-1/executions/+/request",
            "$aws/commands/things/lamp-1/executions/+/response/accepted/json",
            "$aws/commands/things/lamp-1/executions/e-1/cancel/json",
            "$aws/commands/things/lamp-1/executions/#",
        ];
        for f in ok {
            assert!(may_subscribe(&root, &lamp(), f), "{f}");
        }
        let refused = [
            "#",
            "$aws/#",
            "$aws/commands/things/+/executions/+/request/#",
            "$aws/commands/things/lamp-2/executions/+/request/#",
            "$aws/commands/things/lamp-10/executions/+/request/#",
            "$aws/commands/things/lamp-1/#",
            "$aws/commands/things/lamp-1/executions/",
            "$aws/commands/clients/lamp-1/executions/+/request/#",
            "$aws/events/commandExecution/+/+",
            "$share/g/$aws/commands/things/lamp-1/executions/+/request/#",
            "$aws/commands/things/lamp-1/executions/#/x",
            "$aws/commands/things/lamp-1/executions/a+/request",
            "other/commands/things/lamp-1/executions/+/request/#",
        ];
        for f in refused {
            assert!(!may_subscribe(&root, &lamp(), f), "{f}");
        }
    }

    #[test]
    fn event_filters_are_below_the_events_prefix_only() {
        let root = TopicRoot::default();
        for f in [
            "$aws/events/commandExecution/+/+",
            "$aws/events/#",
            "$aws/events/commandExecution/reboot/SUCCEEDED",
        ] {
            assert!(is_event_filter(&root, f), "{f}");
        }
        for f in [
            "$aws/#",
            "#",
            "$aws/events/",
            "$aws/events/#/x",
            "$aws/commands/#",
            "$aws/eventsx/#",
        ] {
            assert!(!is_event_filter(&root, f), "{f}");
        }
    }

    #[test]
    fn a_device_publishes_only_its_own_updates() {
        let root = TopicRoot::default();
        assert!(may_publish(
            &root,
            &lamp(),
            "$aws/commands/things/lamp-1/executions/e-1/response/json"
        ));
        assert!(may_publish(
            &root,
            &lamp(),
            "$aws/commands/things/lamp-1/executions/e-1/response/cbor"
        ));
        for t in [
            "$aws/commands/things/lamp-2/executions/e-1/response/json",
            "$aws/commands/things/lamp-1/executions/e-1/request/json",
            "$aws/commands/things/lamp-1/executions/e-1/response/accepted/json",
            "$aws/commands/things/lamp-1/executions/e-1/cancel/json",
            "$aws/commands/clients/lamp-1/executions/e-1/response/json",
            "$aws/events/commandExecution/c/SUCCEEDED",
            "anything",
        ] {
            assert!(!may_publish(&root, &lamp(), t), "{t}");
        }
    }

    #[test]
    fn a_bare_client_identity_must_use_its_own_client_id() {
        let client = Target::client("sensor-7").unwrap();
        assert!(may_use_client_id(&client, "sensor-7"));
        assert!(!may_use_client_id(&client, "sensor-8"));
        assert!(may_use_client_id(&lamp(), "lamp-1"));
        assert!(may_use_client_id(&lamp(), "lamp-1-second-connection"));
    }

    /// MQTT matching, for the property below: `+` one level, a trailing `#` the rest.
    fn matches(filter: &str, topic: &str) -> bool {
        let (f, t): (Vec<&str>, Vec<&str>) =
            (filter.split('/').collect(), topic.split('/').collect());
        for (i, level) in f.iter().enumerate() {
            match *level {
                "#" => return true,
                "+" if i < t.len() => {}
                l if t.get(i) == Some(&l) => {}
                _ => return false,
            }
        }
        f.len() == t.len()
    }

    proptest::proptest! {
        /// Whatever filter a device is allowed, it matches none of another device's topics
        /// (a namesake client, a longer name, events).
        #[test]
        fn an_allowed_filter_never_reaches_another_identity(
            filter in "[$a-z0-9/+#-]{0,60}",
            tail in "[a-z0-9/+#-]{0,30}",
        ) {
            let root = TopicRoot::default();
            let others = [
                "$aws/commands/things/lamp-10/executions/e/request/json",
                "$aws/commands/clients/lamp-1/executions/e/request/json",
                "$aws/commands/things/lamp-2/executions/e/response/accepted/json",
                "$aws/events/commandExecution/c/SUCCEEDED",
            ];
            for f in [filter.clone(), format!("$aws/commands/things/lamp-1/executions/{tail}")] {
                if may_subscribe(&root, &lamp(), &f) {
                    for other in others {
                        proptest::prop_assert!(!matches(&f, other), "{f} reaches {other}");
                    }
                }
            }
        }
    }
}
