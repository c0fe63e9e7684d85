//! The command resource's rules: create validation, update and timed deletion as
//! `decide`/`apply`, as AWS IoT Commands' CreateCommand, UpdateCommand and DeleteCommand
//! behave (the API-side limits are listed in `docs/device-protocol.md`, Limits).

use std::collections::BTreeMap;

use crate::error::{Rejection, RejectionCode, ValidationError, quote};
use crate::event::Event;
use crate::ids::CommandId;
use crate::limits::*;
use crate::model::{Command, CommandBody, CommandParameter, Payload, PayloadTemplate, TimestampMs};
use crate::template;

/// The only namespace fleetcmd serves (FleetWise is AWS-specific).
pub const NAMESPACE_AWS_IOT: &str = "AWS-IoT";
/// Content type of a static payload that does not name one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// CreateCommand, already converted from the API but not yet validated.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CreateCommand {
    pub command_id: String,
    pub namespace: String,
    pub display_name: String,
    pub description: String,
    pub payload: Option<Payload>,
    pub template: Option<PayloadTemplate>,
    pub parameters: Vec<CommandParameter>,
    pub tags: BTreeMap<String, String>,
    /// See [`Command::supersede_pending`].
    #[serde(default)]
    pub supersede_pending: bool,
}

/// UpdateCommand: only these three fields may change.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct UpdateCommand {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub deprecated: Option<bool>,
}

/// An input aimed at a command.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum CommandInput {
    Create(Box<CreateCommand>),
    Update(UpdateCommand),
    Delete,
    /// The scheduled deletion time was reached.
    Expire,
}

/// Deployment settings the command rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSettings {
    /// How long a non-deprecated (or recently deprecated) command waits before deletion.
    pub deletion_wait_secs: u64,
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            deletion_wait_secs: DELETION_WAIT_DEFAULT_SECS,
        }
    }
}

/// The namespace a request names: empty means [`NAMESPACE_AWS_IOT`], the only one fleetcmd
/// serves; anything else is an error naming `namespace`. Every call with a `namespace` field
/// (CreateCommand, ListCommands, ListCommandExecutions) goes through this one rule.
pub fn check_namespace(namespace: &str) -> Result<&'static str, ValidationError> {
    if namespace.is_empty() || namespace == NAMESPACE_AWS_IOT {
        return Ok(NAMESPACE_AWS_IOT);
    }
    Err(ValidationError::new(
        "namespace",
        format!(
            "only {NAMESPACE_AWS_IOT} is supported, got {}",
            quote(namespace)
        ),
    ))
}

/// Text without control characters, at most `max` chars.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.chars().count() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            format!("must not contain control characters, found {c:?}"),
        ));
    }
    Ok(())
}

fn check_content_type(ct: &str) -> Result<(), ValidationError> {
    let field = "payload.content_type";
    let essence = ct.split(';').next().unwrap_or("").trim();
    let ok = essence.split_once('/').is_some_and(|(t, s)| {
        let token = |x: &str| {
            !x.is_empty()
                && x.chars()
                    .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c))
        };
        token(t) && token(s)
    });
    if !ok || ct.len() > 255 {
        return Err(ValidationError::new(
            field,
            format!(
                "must be a type/subtype MIME type (at most 255 characters), got {}",
                quote(ct)
            ),
        ));
    }
    Ok(())
}

/// Validates a create request and builds the command it describes.
pub fn validate_create(req: &CreateCommand, now: TimestampMs) -> Result<Command, ValidationError> {
    let command_id = CommandId::parse(req.command_id.clone())?;
    let namespace = check_namespace(&req.namespace)?;
    check_text("display_name", &req.display_name, DISPLAY_NAME_MAX_CHARS)?;
    check_text("description", &req.description, DESCRIPTION_MAX_CHARS)?;
    if req.tags.len() > TAGS_MAX {
        return Err(ValidationError::new(
            "tags",
            format!("at most {TAGS_MAX} tags"),
        ));
    }
    for (k, v) in &req.tags {
        if k.is_empty() || k.chars().count() > TAG_KEY_MAX_CHARS {
            return Err(ValidationError::new(
                "tags",
                format!(
                    "tag key {} must be 1–{TAG_KEY_MAX_CHARS} characters",
                    quote(k)
                ),
            ));
        }
        if v.chars().count() > TAG_VALUE_MAX_CHARS {
            return Err(ValidationError::new(
                "tags",
                format!(
                    "value of tag {} must be at most {TAG_VALUE_MAX_CHARS} characters",
                    quote(k)
                ),
            ));
        }
    }
    let body = match (&req.payload, &req.template) {
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "payload",
                "set either payload or payload_template, not both",
            ));
        }
        (None, None) => {
            return Err(ValidationError::new(
                "payload",
                "one of payload or payload_template is required",
            ));
        }
        (Some(p), None) => {
            if p.content.len() > PAYLOAD_MAX_BYTES {
                return Err(ValidationError::new(
                    "payload.content",
                    format!(
                        "must be at most {PAYLOAD_MAX_BYTES} bytes, got {}",
                        p.content.len()
                    ),
                ));
            }
            if !req.parameters.is_empty() {
                return Err(ValidationError::new(
                    "mandatory_parameters",
                    "parameters apply only to a payload_template",
                ));
            }
            let content_type = if p.content_type.is_empty() {
                DEFAULT_CONTENT_TYPE.to_string()
            } else {
                p.content_type.clone()
            };
            check_content_type(&content_type)?;
            CommandBody::Static(Payload {
                content: p.content.clone(),
                content_type,
            })
        }
        (None, Some(t)) => {
            template::validate_parameters(&req.parameters)?;
            template::validate_template(&t.template, &req.parameters)?;
            CommandBody::Template(t.clone())
        }
    };
    Ok(Command {
        command_id,
        namespace: namespace.to_string(),
        display_name: req.display_name.clone(),
        description: req.description.clone(),
        body,
        parameters: req.parameters.clone(),
        tags: req.tags.clone(),
        created_at: now,
        last_updated_at: now,
        deprecated: false,
        deprecated_at: None,
        delete_at: None,
        supersede_pending: req.supersede_pending,
    })
}

fn not_found(id: &str) -> Rejection {
    Rejection::new(
        RejectionCode::ResourceNotFound,
        format!("command {id} not found"),
    )
}

/// Decides what an input does to a command (`None`: it does not exist).
pub fn decide(
    command_id: &str,
    state: Option<&Command>,
    input: &CommandInput,
    now: TimestampMs,
    settings: CommandSettings,
) -> Result<Vec<Event>, Rejection> {
    match (input, state) {
        (CommandInput::Create(_), Some(existing)) => Err(Rejection::new(
            RejectionCode::Conflict,
            format!(
                "command {} already exists{}",
                existing.command_id,
                if existing.pending_deletion() {
                    " (pending deletion)"
                } else {
                    ""
                }
            ),
        )),
        (CommandInput::Create(req), None) => {
            let command = validate_create(req, now)?;
            Ok(vec![Event::CommandCreated { command }])
        }
        (_, None) => Err(not_found(command_id)),
        (CommandInput::Update(u), Some(c)) => {
            if u.display_name.is_none() && u.description.is_none() && u.deprecated.is_none() {
                return Err(ValidationError::new(
                    "update",
                    "nothing to update: set display_name, description or deprecated",
                )
                .into());
            }
            if c.pending_deletion() {
                return Err(Rejection::new(
                    RejectionCode::FailedPrecondition,
                    format!("command {command_id} is pending deletion and cannot be updated"),
                ));
            }
            let restoring = u.deprecated == Some(false);
            if c.deprecated && !restoring && (u.display_name.is_some() || u.description.is_some()) {
                return Err(Rejection::new(
                    RejectionCode::FailedPrecondition,
                    format!(
                        "command {command_id} is deprecated; restore it (deprecated=false) to edit it"
                    ),
                ));
            }
            if let Some(n) = &u.display_name {
                check_text("display_name", n, DISPLAY_NAME_MAX_CHARS)?;
            }
            if let Some(d) = &u.description {
                check_text("description", d, DESCRIPTION_MAX_CHARS)?;
            }
            Ok(vec![Event::CommandUpdated {
                display_name: u.display_name.clone(),
                description: u.description.clone(),
                deprecated: u.deprecated,
            }])
        }
        (CommandInput::Delete, Some(c)) => {
            if c.pending_deletion() {
                return Ok(vec![]);
            }
            let wait_ms = settings.deletion_wait_secs as i64 * 1000;
            let long_deprecated =
                c.deprecated && c.deprecated_at.is_some_and(|at| now - at > wait_ms);
            if long_deprecated {
                Ok(vec![Event::CommandDeleted])
            } else {
                Ok(vec![Event::CommandDeletionScheduled {
                    delete_at: now + wait_ms,
                }])
            }
        }
        (CommandInput::Expire, Some(c)) => match c.delete_at {
            Some(at) if now >= at => Ok(vec![Event::CommandDeleted]),
            _ => Ok(vec![]),
        },
    }
}

/// Folds one event into a command's state (`None`: absent or deleted).
pub fn apply(state: &mut Option<Command>, event: &Event, at: TimestampMs) {
    match event {
        Event::CommandCreated { command } => *state = Some(command.clone()),
        Event::CommandUpdated {
            display_name,
            description,
            deprecated,
        } => {
            if let Some(c) = state {
                if let Some(n) = display_name {
                    c.display_name = n.clone();
                }
                if let Some(d) = description {
                    c.description = d.clone();
                }
                if let Some(dep) = deprecated {
                    if *dep && !c.deprecated {
                        c.deprecated_at = Some(at);
                    }
                    if !dep {
                        c.deprecated_at = None;
                    }
                    c.deprecated = *dep;
                }
                c.last_updated_at = at;
            }
        }
        Event::CommandDeletionScheduled { delete_at } => {
            if let Some(c) = state {
                c.delete_at = Some(*delete_at);
                c.last_updated_at = at;
            }
        }
        Event::CommandDeleted => *state = None,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: &str) -> CommandInput {
        CommandInput::Create(Box::new(CreateCommand {
            command_id: id.into(),
            payload: Some(Payload {
                content: b"{}".to_vec(),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        }))
    }

    /// The update that deprecates a command, which several lifecycle steps need.
    fn deprecate() -> CommandInput {
        CommandInput::Update(UpdateCommand {
            deprecated: Some(true),
            ..Default::default()
        })
    }

    fn run(
        state: &mut Option<Command>,
        input: CommandInput,
        now: TimestampMs,
    ) -> Result<Vec<Event>, Rejection> {
        let events = decide(
            "c",
            state.as_ref(),
            &input,
            now,
            CommandSettings {
                deletion_wait_secs: 100,
            },
        )?;
        for e in &events {
            apply(state, e, now);
        }
        Ok(events)
    }

    #[test]
    fn create_then_conflict() {
        let mut s = None;
        run(&mut s, create("c"), 1).unwrap();
        let c = s.clone().unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.created_at, c.deprecated),
            (NAMESPACE_AWS_IOT, 1, false)
        );
        assert_eq!(
            run(&mut s, create("c"), 2).unwrap_err().code,
            RejectionCode::Conflict
        );
    }

    #[test]
    fn static_payload_limits_and_default_content_type() {
        let mut req = CreateCommand {
            command_id: "c".into(),
            payload: Some(Payload {
                content: vec![0; PAYLOAD_MAX_BYTES + 1],
                content_type: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(
            validate_create(&req, 0).unwrap_err().field,
            "payload.content"
        );
        req.payload = Some(Payload {
            content: vec![1],
            content_type: String::new(),
        });
        let c = validate_create(&req, 0).unwrap();
        assert_eq!(
            c.body,
            CommandBody::Static(Payload {
                content: vec![1],
                content_type: DEFAULT_CONTENT_TYPE.into()
            })
        );
        req.payload = Some(Payload {
            content: vec![1],
            content_type: "nonsense".into(),
        });
        assert_eq!(
            validate_create(&req, 0).unwrap_err().field,
            "payload.content_type"
        );
        req.namespace = "AWS-IoT-FleetWise".into();
        assert_eq!(validate_create(&req, 0).unwrap_err().field, "namespace");
        req.namespace.clear();
        req.payload = None;
        assert_eq!(validate_create(&req, 0).unwrap_err().field, "payload");
        req.display_name = "x".repeat(65);
        assert_eq!(validate_create(&req, 0).unwrap_err().field, "display_name");
        req.display_name = "bell\u{7}".into();
        assert!(
            validate_create(&req, 0)
                .unwrap_err()
                .message
                .contains("control")
        );
    }

    #[test]
    fn one_namespace_rule_quoting_the_value_cut() {
        assert_eq!(check_namespace(""), Ok(NAMESPACE_AWS_IOT));
        assert_eq!(check_namespace("AWS-IoT"), Ok(NAMESPACE_AWS_IOT));
        for bad in ["AWS-IoT-FleetWise", "aws-iot", "AWS-IoT ", "*"] {
            let e = check_namespace(bad).unwrap_err();
            assert_eq!(e.field, "namespace");
            assert_eq!(e.message, format!("only AWS-IoT is supported, got {bad:?}"));
        }
        let e = check_namespace(&"n".repeat(5_000)).unwrap_err();
        assert!(
            e.message.ends_with("…\" (5000 characters)"),
            "{}",
            e.message
        );
        assert!(e.message.len() < 150);
        // CreateCommand goes through the same rule, and so do its other echoed fields.
        let mut req = CreateCommand {
            command_id: "c".into(),
            namespace: "n".repeat(100_000),
            payload: Some(Payload {
                content: vec![1],
                content_type: "x".repeat(100_000),
            }),
            ..Default::default()
        };
        assert_eq!(validate_create(&req, 0), Err(e_for(&req.namespace)));
        req.namespace.clear();
        let e = validate_create(&req, 0).unwrap_err();
        assert_eq!(e.field, "payload.content_type");
        assert!(e.message.len() < 200, "{}", e.message.len());
        req.payload = Some(Payload {
            content: vec![1],
            content_type: String::new(),
        });
        req.tags = BTreeMap::from([("k".repeat(100_000), String::new())]);
        let e = validate_create(&req, 0).unwrap_err();
        assert_eq!(e.field, "tags");
        assert!(e.message.len() < 200, "{}", e.message.len());
    }

    fn e_for(namespace: &str) -> ValidationError {
        check_namespace(namespace).unwrap_err()
    }

    #[test]
    fn update_rules() {
        let mut s = None;
        run(&mut s, create("c"), 1).unwrap();
        assert_eq!(
            run(&mut s, CommandInput::Update(UpdateCommand::default()), 2)
                .unwrap_err()
                .code,
            RejectionCode::InvalidRequest
        );
        run(
            &mut s,
            CommandInput::Update(UpdateCommand {
                display_name: Some("Reboot".into()),
                ..Default::default()
            }),
            2,
        )
        .unwrap();
        assert_eq!(s.as_ref().unwrap().display_name, "Reboot");
        assert_eq!(s.as_ref().unwrap().last_updated_at, 2);
        run(&mut s, deprecate(), 3).unwrap();
        assert_eq!(s.as_ref().unwrap().deprecated_at, Some(3));
        let edit = UpdateCommand {
            description: Some("d".into()),
            ..Default::default()
        };
        assert_eq!(
            run(&mut s, CommandInput::Update(edit), 4).unwrap_err().code,
            RejectionCode::FailedPrecondition
        );
        let restore = UpdateCommand {
            description: Some("d".into()),
            deprecated: Some(false),
            ..Default::default()
        };
        run(&mut s, CommandInput::Update(restore), 5).unwrap();
        let c = s.clone().unwrap();
        assert_eq!(
            (c.deprecated, c.deprecated_at, c.description.as_str()),
            (false, None, "d")
        );
        assert_eq!(
            run(&mut None, deprecate(), 6).unwrap_err().code,
            RejectionCode::ResourceNotFound
        );
    }

    #[test]
    fn delete_is_scheduled_unless_deprecated_long_enough() {
        let mut s = None;
        run(&mut s, create("c"), 0).unwrap();
        let ev = run(&mut s, CommandInput::Delete, 10).unwrap();
        assert_eq!(
            ev,
            vec![Event::CommandDeletionScheduled { delete_at: 100_010 }]
        );
        assert!(s.as_ref().unwrap().pending_deletion());
        // Deleting again is idempotent; updates are refused; the timer removes it.
        assert!(run(&mut s, CommandInput::Delete, 20).unwrap().is_empty());
        assert_eq!(
            run(&mut s, deprecate(), 30).unwrap_err().code,
            RejectionCode::FailedPrecondition
        );
        assert!(
            run(&mut s, CommandInput::Expire, 100_009)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            run(&mut s, CommandInput::Expire, 100_010).unwrap(),
            vec![Event::CommandDeleted]
        );
        assert!(s.is_none());

        // Deprecated for longer than the wait: removed at once.
        let mut s = None;
        run(&mut s, create("c"), 0).unwrap();
        run(&mut s, deprecate(), 1).unwrap();
        assert_eq!(
            run(&mut s.clone(), CommandInput::Delete, 100_001).unwrap(),
            vec![Event::CommandDeletionScheduled { delete_at: 200_001 }]
        );
        assert_eq!(
            run(&mut s, CommandInput::Delete, 100_002).unwrap(),
            vec![Event::CommandDeleted]
        );
        assert!(s.is_none());
    }
}
