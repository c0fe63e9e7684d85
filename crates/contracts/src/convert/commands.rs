//! Commands: value conditions and command parameters, payloads, CreateCommand and
//! UpdateCommand requests, and the command messages and responses.

use fleetcmd_domain::command::{CreateCommand, UpdateCommand};
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::CommandId;
use fleetcmd_domain::model::{
    Command, CommandBody, CommandParameter, Operand, OutputFormat, Payload, PayloadTemplate,
    ValueCondition,
};

use super::{
    Arns, comparison_operator_from_pb, index_path, opt_timestamp_from_ms, output_format_from_pb,
    parameter_type_from_pb, parameter_value_from_pb, path, timestamp_from_ms,
};
use crate::pb;

// ---------------------------------------------------------------------------------------------
// Value conditions and command parameters

/// The `operand` of a value condition at `field` (e.g. `...value_conditions[0].operand`):
/// it is required and exactly one member must be set. Operand counts and number syntax are
/// the template rules' business.
pub fn operand_from_pb(
    field: &str,
    operand: Option<pb::ConditionOperand>,
) -> Result<Operand, ValidationError> {
    use pb::condition_operand::Operand as P;
    let Some(operand) = operand else {
        return Err(ValidationError::new(field, "is required"));
    };
    match operand.operand {
        Some(P::Number(n)) => Ok(Operand::Number(n)),
        Some(P::Numbers(l)) => Ok(Operand::Numbers(l.values)),
        Some(P::String(s)) => Ok(Operand::String(s)),
        Some(P::Strings(l)) => Ok(Operand::Strings(l.values)),
        Some(P::NumberRange(r)) => Ok(Operand::NumberRange {
            min: r.min,
            max: r.max,
        }),
        None => Err(ValidationError::new(
            field,
            "exactly one of number, numbers, string, strings, number_range must be set",
        )),
    }
}

impl From<Operand> for pb::ConditionOperand {
    fn from(o: Operand) -> Self {
        use pb::condition_operand::Operand as P;
        let operand = match o {
            Operand::Number(n) => P::Number(n),
            Operand::Numbers(values) => P::Numbers(pb::StringList { values }),
            Operand::String(s) => P::String(s),
            Operand::Strings(values) => P::Strings(pb::StringList { values }),
            Operand::NumberRange { min, max } => P::NumberRange(pb::NumberRange { min, max }),
        };
        Self {
            operand: Some(operand),
        }
    }
}

/// A value condition at `field` (e.g. `mandatory_parameters[0].value_conditions[1]`).
pub fn value_condition_from_pb(
    field: &str,
    c: pb::ValueCondition,
) -> Result<ValueCondition, ValidationError> {
    Ok(ValueCondition {
        operator: comparison_operator_from_pb(
            &path(field, "comparison_operator"),
            c.comparison_operator,
        )?,
        operand: operand_from_pb(&path(field, "operand"), c.operand)?,
    })
}

impl From<ValueCondition> for pb::ValueCondition {
    fn from(c: ValueCondition) -> Self {
        Self {
            comparison_operator: pb::ComparisonOperator::from(c.operator) as i32,
            operand: Some(c.operand.into()),
        }
    }
}

/// A command parameter at `field` (e.g. `mandatory_parameters[0]`). The name pattern, the
/// value types and which operators suit which type are left to the template rules.
pub fn command_parameter_from_pb(
    field: &str,
    p: pb::CommandParameter,
) -> Result<CommandParameter, ValidationError> {
    let r#type = parameter_type_from_pb(&path(field, "type"), p.r#type)?;
    let value = p
        .value
        .map(|v| parameter_value_from_pb(&path(field, "value"), v))
        .transpose()?;
    let default_value = p
        .default_value
        .map(|v| parameter_value_from_pb(&path(field, "default_value"), v))
        .transpose()?;
    let conditions_field = path(field, "value_conditions");
    let value_conditions = p
        .value_conditions
        .into_iter()
        .enumerate()
        .map(|(i, c)| value_condition_from_pb(&index_path(&conditions_field, i), c))
        .collect::<Result<_, _>>()?;
    Ok(CommandParameter {
        name: p.name,
        r#type,
        default_value,
        value,
        value_conditions,
        description: p.description,
    })
}

impl From<CommandParameter> for pb::CommandParameter {
    fn from(p: CommandParameter) -> Self {
        Self {
            name: p.name,
            r#type: pb::ParameterType::from(p.r#type) as i32,
            value: p.value.map(Into::into),
            default_value: p.default_value.map(Into::into),
            value_conditions: p.value_conditions.into_iter().map(Into::into).collect(),
            description: p.description,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

impl From<pb::Payload> for Payload {
    /// As given: an empty content type gets its default in `command::validate_create`.
    fn from(p: pb::Payload) -> Self {
        Self {
            content: p.content,
            content_type: p.content_type,
        }
    }
}

impl From<Payload> for pb::Payload {
    fn from(p: Payload) -> Self {
        Self {
            content: p.content,
            content_type: p.content_type,
        }
    }
}

fn preprocessor_to_pb(format: OutputFormat) -> pb::Preprocessor {
    pb::Preprocessor {
        aws_json_substitution: Some(pb::AwsJsonSubstitution {
            output_format: pb::OutputFormat::from(format) as i32,
        }),
    }
}

/// CreateCommand, converted but not validated: `command::validate_create` checks the id,
/// namespace, texts, tags, payload-vs-template exclusivity and the template rules.
///
/// - A non-empty `payload_template` becomes a [`PayloadTemplate`] whose output format is
///   `preprocessor.aws_json_substitution.output_format` (JSON when unset).
/// - A `preprocessor` without a `payload_template` is an error naming `preprocessor`: the
///   domain request has nowhere to keep it, and dropping it silently would hide a mistake.
/// - Parameter errors name `mandatory_parameters[i]...`.
impl TryFrom<pb::CreateCommandRequest> for CreateCommand {
    type Error = ValidationError;

    fn try_from(req: pb::CreateCommandRequest) -> Result<Self, Self::Error> {
        let template = if req.payload_template.is_empty() {
            if req.preprocessor.is_some() {
                return Err(ValidationError::new(
                    "preprocessor",
                    "applies only to a payload_template",
                ));
            }
            None
        } else {
            let output_format = match req.preprocessor.and_then(|p| p.aws_json_substitution) {
                Some(s) => output_format_from_pb(
                    "preprocessor.aws_json_substitution.output_format",
                    s.output_format,
                )?,
                None => OutputFormat::Json,
            };
            Some(PayloadTemplate {
                template: req.payload_template,
                output_format,
            })
        };
        let parameters = req
            .mandatory_parameters
            .into_iter()
            .enumerate()
            .map(|(i, p)| command_parameter_from_pb(&index_path("mandatory_parameters", i), p))
            .collect::<Result<_, _>>()?;
        Ok(CreateCommand {
            command_id: req.command_id,
            namespace: req.namespace,
            display_name: req.display_name,
            description: req.description,
            payload: req.payload.map(Into::into),
            template,
            parameters,
            tags: req.tags.into_iter().collect(),
            supersede_pending: req.supersede_pending,
        })
    }
}

/// A command as GetCommand returns it: with its ARN, `pending_deletion` and (fleetcmd)
/// `deletion_scheduled_at` from `delete_at`; a template command carries `payload_template`
/// and a `preprocessor` naming its output format, a static one `payload`.
pub fn command_to_pb(command: Command, arns: &Arns) -> pb::Command {
    let command_arn = arns.command(&command.command_id);
    let pending_deletion = command.pending_deletion();
    let (payload, payload_template, preprocessor) = match command.body {
        CommandBody::Static(p) => (Some(p.into()), String::new(), None),
        CommandBody::Template(t) => (None, t.template, Some(preprocessor_to_pb(t.output_format))),
    };
    pb::Command {
        command_id: command.command_id.into_string(),
        command_arn,
        namespace: command.namespace,
        display_name: command.display_name,
        description: command.description,
        payload,
        payload_template,
        preprocessor,
        mandatory_parameters: command.parameters.into_iter().map(Into::into).collect(),
        tags: command.tags.into_iter().collect(),
        created_at: Some(timestamp_from_ms(command.created_at)),
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
        deprecated: command.deprecated,
        pending_deletion,
        deletion_scheduled_at: opt_timestamp_from_ms(command.delete_at),
        supersede_pending: command.supersede_pending,
    }
}

/// A command as ListCommands returns it.
pub fn command_summary_to_pb(command: Command, arns: &Arns) -> pb::CommandSummary {
    pb::CommandSummary {
        command_arn: arns.command(&command.command_id),
        pending_deletion: command.pending_deletion(),
        command_id: command.command_id.into_string(),
        display_name: command.display_name,
        deprecated: command.deprecated,
        created_at: Some(timestamp_from_ms(command.created_at)),
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
    }
}

/// CreateCommand's answer: the id and its ARN.
pub fn create_command_response(id: &CommandId, arns: &Arns) -> pb::CreateCommandResponse {
    pb::CreateCommandResponse {
        command_id: id.to_string(),
        command_arn: arns.command(id),
    }
}

/// UpdateCommand's answer, from the command after the update.
pub fn update_command_response(command: Command) -> pb::UpdateCommandResponse {
    pb::UpdateCommandResponse {
        command_id: command.command_id.into_string(),
        display_name: command.display_name,
        description: command.description,
        deprecated: command.deprecated,
        last_updated_at: Some(timestamp_from_ms(command.last_updated_at)),
    }
}

/// UpdateCommand: the three optional fields as given (`Some("")` clears a text). The request's
/// `command_id` is not part of [`UpdateCommand`]; parse it first with `CommandId::parse`
/// (which names `command_id`). "Nothing to update" and the text limits are checked by
/// `command::decide`.
impl From<pb::UpdateCommandRequest> for UpdateCommand {
    fn from(req: pb::UpdateCommandRequest) -> Self {
        Self {
            display_name: req.display_name,
            description: req.description,
            deprecated: req.deprecated,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use fleetcmd_domain::command::{NAMESPACE_AWS_IOT, validate_create};
    use fleetcmd_domain::model::{ComparisonOperator, ParameterType, ParameterValue};

    use super::*;
    use crate::convert::test_support::{err_field, ts, ul};

    fn template_command() -> Command {
        Command {
            command_id: CommandId::parse("set-temp").unwrap(),
            namespace: NAMESPACE_AWS_IOT.into(),
            display_name: "Set temperature".into(),
            description: "d".into(),
            body: CommandBody::Template(PayloadTemplate {
                template: r#"{"t":"${aws:iot:commandexecution::parameter:temp}"}"#.into(),
                output_format: OutputFormat::Cbor,
            }),
            parameters: vec![CommandParameter {
                name: "temp".into(),
                r#type: ParameterType::Double,
                default_value: Some(ParameterValue::D(20.5)),
                value: None,
                value_conditions: vec![ValueCondition {
                    operator: ComparisonOperator::InRange,
                    operand: Operand::NumberRange {
                        min: "10".into(),
                        max: "30".into(),
                    },
                }],
                description: "degrees".into(),
            }],
            tags: BTreeMap::from([("team".to_string(), "hvac".to_string())]),
            created_at: 5_000,
            last_updated_at: 6_000,
            deprecated: true,
            deprecated_at: Some(6_000),
            delete_at: Some(7_000),
            supersede_pending: true,
        }
    }

    // --- value conditions and command parameters -----------------------------------------

    #[test]
    fn value_conditions_round_trip_every_operand() {
        let operands = [
            Operand::Number("1.5".into()),
            Operand::Numbers(vec!["1".into(), "2".into()]),
            Operand::String("on".into()),
            Operand::Strings(vec!["a".into(), "b".into()]),
            Operand::NumberRange {
                min: "-1".into(),
                max: "1".into(),
            },
        ];
        for (i, operand) in operands.into_iter().enumerate() {
            let c = ValueCondition {
                operator: ComparisonOperator::InSet,
                operand,
            };
            let p = pb::ValueCondition::from(c.clone());
            assert_eq!(p.comparison_operator, pb::ComparisonOperator::InSet as i32);
            assert!(p.operand.is_some(), "operand {i}");
            assert_eq!(value_condition_from_pb("c", p), Ok(c));
        }
    }

    #[test]
    fn bad_value_conditions_name_the_field() {
        let ok_operand = Some(pb::ConditionOperand::from(Operand::Number("1".into())));
        let missing = pb::ValueCondition {
            comparison_operator: pb::ComparisonOperator::Equals as i32,
            operand: None,
        };
        let e = value_condition_from_pb("c[0]", missing).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("c[0].operand", "is required")
        );
        let empty = pb::ValueCondition {
            comparison_operator: pb::ComparisonOperator::Equals as i32,
            operand: Some(pb::ConditionOperand { operand: None }),
        };
        let e = value_condition_from_pb("c[0]", empty).unwrap_err();
        assert_eq!(e.field, "c[0].operand");
        assert!(e.message.contains("exactly one of number, numbers"), "{e}");
        let no_op = pb::ValueCondition {
            comparison_operator: 0,
            operand: ok_operand,
        };
        assert_eq!(
            err_field(value_condition_from_pb("c[0]", no_op)),
            "c[0].comparison_operator"
        );
    }

    #[test]
    fn command_parameters_round_trip_and_errors() {
        let param = CommandParameter {
            name: "level".into(),
            r#type: ParameterType::UnsignedLong,
            default_value: Some(ParameterValue::Ul(3)),
            value: Some(ParameterValue::Ul(u64::MAX)),
            value_conditions: vec![ValueCondition {
                operator: ComparisonOperator::LessThanEquals,
                operand: Operand::Number("18446744073709551615".into()),
            }],
            description: "how loud".into(),
        };
        let p = pb::CommandParameter::from(param.clone());
        assert_eq!(p.r#type, pb::ParameterType::Unsignedlong as i32);
        assert_eq!(p.default_value, Some(ul("3")));
        assert_eq!(
            command_parameter_from_pb("m[0]", p.clone()),
            Ok(param.clone())
        );

        let bare = CommandParameter {
            value: None,
            default_value: None,
            value_conditions: vec![],
            description: String::new(),
            ..param
        };
        assert_eq!(
            command_parameter_from_pb("m", bare.clone().into()),
            Ok(bare)
        );

        let mut bad = p.clone();
        bad.r#type = 0;
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].type"
        );
        let mut bad = p.clone();
        bad.value = Some(ul("-1"));
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].value.ul"
        );
        let mut bad = p.clone();
        bad.default_value = Some(pb::ParameterValue { value: None });
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].default_value"
        );
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let double = pb::ParameterValue {
                value: Some(pb::parameter_value::Value::D(d)),
            };
            let mut bad = p.clone();
            bad.default_value = Some(double.clone());
            assert_eq!(
                err_field(command_parameter_from_pb("m[1]", bad)),
                "m[1].default_value",
                "{d}"
            );
            let mut bad = p.clone();
            bad.value = Some(double);
            assert_eq!(
                err_field(command_parameter_from_pb("m[1]", bad)),
                "m[1].value",
                "{d}"
            );
        }
        let mut bad = p;
        bad.value_conditions.push(pb::ValueCondition {
            comparison_operator: 1,
            operand: None,
        });
        assert_eq!(
            err_field(command_parameter_from_pb("m[1]", bad)),
            "m[1].value_conditions[1].operand"
        );
    }

    // --- commands ------------------------------------------------------------------------

    #[test]
    fn create_command_static_payload() {
        let req = pb::CreateCommandRequest {
            command_id: "reboot".into(),
            display_name: "Reboot".into(),
            description: "restart the device".into(),
            payload: Some(pb::Payload {
                content: b"{}".to_vec(),
                content_type: String::new(),
            }),
            tags: HashMap::from([("team".to_string(), "ops".to_string())]),
            ..Default::default()
        };
        let c = CreateCommand::try_from(req).unwrap();
        assert_eq!(c.command_id, "reboot");
        assert_eq!(
            c.namespace, "",
            "the default namespace is the domain's business"
        );
        assert_eq!(c.template, None);
        assert_eq!(
            c.payload,
            Some(Payload {
                content: b"{}".to_vec(),
                content_type: String::new()
            })
        );
        assert_eq!(c.tags.get("team").map(String::as_str), Some("ops"));
        assert!(c.parameters.is_empty());

        // Through the domain and back out: the content type default and the ARN appear.
        let command = validate_create(&c, 42).unwrap();
        let p = command_to_pb(command.clone(), &Arns::default());
        assert_eq!(
            p.command_arn,
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(p.namespace, NAMESPACE_AWS_IOT);
        assert_eq!(
            p.payload.as_ref().map(|p| p.content_type.as_str()),
            Some("application/octet-stream")
        );
        assert_eq!((p.payload_template.as_str(), p.preprocessor), ("", None));
        assert_eq!(p.created_at, Some(ts(0, 42_000_000)));
        assert_eq!((p.pending_deletion, p.deletion_scheduled_at), (false, None));
        assert_eq!(
            p.tags,
            HashMap::from([("team".to_string(), "ops".to_string())])
        );
    }

    #[test]
    fn create_command_template_and_output_format() {
        let command = template_command();
        let CommandBody::Template(t) = &command.body else {
            unreachable!()
        };
        let mut req = pb::CreateCommandRequest {
            command_id: "set-temp".into(),
            payload_template: t.template.clone(),
            preprocessor: Some(preprocessor_to_pb(OutputFormat::Cbor)),
            mandatory_parameters: command.parameters.iter().cloned().map(Into::into).collect(),
            ..Default::default()
        };
        let c = CreateCommand::try_from(req.clone()).unwrap();
        assert_eq!(c.template, Some(t.clone()));
        assert_eq!(c.parameters, command.parameters);
        assert_eq!(c.payload, None);

        // No preprocessor, or one without a substitution, or an unspecified format: JSON.
        for pre in [
            None,
            Some(pb::Preprocessor::default()),
            Some(preprocessor_to_pb(OutputFormat::Json)),
            Some(pb::Preprocessor {
                aws_json_substitution: Some(pb::AwsJsonSubstitution { output_format: 0 }),
            }),
        ] {
            req.preprocessor = pre;
            let c = CreateCommand::try_from(req.clone()).unwrap();
            assert_eq!(
                c.template.map(|t| t.output_format),
                Some(OutputFormat::Json)
            );
        }

        // Payload and template together pass through: validate_create rejects them.
        req.payload = Some(pb::Payload::default());
        let both = CreateCommand::try_from(req.clone()).unwrap();
        assert!(both.payload.is_some() && both.template.is_some());
    }

    #[test]
    fn create_command_errors_name_the_field() {
        let req = pb::CreateCommandRequest {
            command_id: "c".into(),
            payload_template: "{}".into(),
            preprocessor: Some(pb::Preprocessor {
                aws_json_substitution: Some(pb::AwsJsonSubstitution { output_format: 7 }),
            }),
            ..Default::default()
        };
        assert_eq!(
            err_field(CreateCommand::try_from(req.clone())),
            "preprocessor.aws_json_substitution.output_format"
        );
        let static_with_preprocessor = pb::CreateCommandRequest {
            payload_template: String::new(),
            payload: Some(pb::Payload::default()),
            ..req.clone()
        };
        let e = CreateCommand::try_from(static_with_preprocessor).unwrap_err();
        assert_eq!(e.field, "preprocessor");
        assert!(e.message.contains("payload_template"), "{e}");
        let bad_param = pb::CreateCommandRequest {
            preprocessor: None,
            mandatory_parameters: vec![
                CommandParameter {
                    name: "a".into(),
                    r#type: ParameterType::Boolean,
                    default_value: None,
                    value: None,
                    value_conditions: vec![],
                    description: String::new(),
                }
                .into(),
                pb::CommandParameter {
                    name: "b".into(),
                    ..Default::default()
                },
            ],
            ..req
        };
        let e = CreateCommand::try_from(bad_param).unwrap_err();
        assert_eq!(e.field, "mandatory_parameters[1].type");
        assert!(e.message.contains("PARAMETER_TYPE_UNSPECIFIED"), "{e}");
    }

    #[test]
    fn command_to_pb_template_and_pending_deletion() {
        let command = template_command();
        let arns = Arns::new("r", "1");
        let p = command_to_pb(command.clone(), &arns);
        assert_eq!(p.command_arn, "arn:aws:iot:r:1:command/set-temp");
        assert_eq!(p.payload, None);
        assert!(p.payload_template.contains("parameter:temp"));
        assert_eq!(p.preprocessor, Some(preprocessor_to_pb(OutputFormat::Cbor)));
        assert_eq!(p.mandatory_parameters.len(), 1);
        assert_eq!(
            command_parameter_from_pb("m", p.mandatory_parameters[0].clone()),
            Ok(command.parameters[0].clone())
        );
        assert!(p.deprecated && p.pending_deletion);
        assert_eq!(p.deletion_scheduled_at, Some(ts(7, 0)));
        assert_eq!(p.last_updated_at, Some(ts(6, 0)));

        // And it reads back as the create request that would make it.
        let req = pb::CreateCommandRequest {
            command_id: p.command_id.clone(),
            namespace: p.namespace.clone(),
            display_name: p.display_name.clone(),
            description: p.description.clone(),
            payload: p.payload.clone(),
            payload_template: p.payload_template.clone(),
            preprocessor: p.preprocessor,
            mandatory_parameters: p.mandatory_parameters.clone(),
            tags: p.tags.clone(),
            supersede_pending: p.supersede_pending,
        };
        let c = CreateCommand::try_from(req).unwrap();
        assert_eq!(CommandBody::Template(c.template.unwrap()), command.body);
        assert_eq!(
            (c.parameters, c.tags),
            (command.parameters.clone(), command.tags.clone())
        );

        let s = command_summary_to_pb(command.clone(), &arns);
        assert_eq!(s.command_arn, p.command_arn);
        assert_eq!(
            (s.command_id.as_str(), s.display_name.as_str()),
            ("set-temp", "Set temperature")
        );
        assert!(s.deprecated && s.pending_deletion);
        assert_eq!(
            (s.created_at, s.last_updated_at),
            (Some(ts(5, 0)), Some(ts(6, 0)))
        );

        let not_pending = Command {
            delete_at: None,
            ..command
        };
        let s = command_summary_to_pb(not_pending.clone(), &arns);
        assert!(!s.pending_deletion);
        let p = command_to_pb(not_pending, &arns);
        assert_eq!((p.pending_deletion, p.deletion_scheduled_at), (false, None));
    }

    #[test]
    fn command_responses() {
        let command = template_command();
        let r = create_command_response(&command.command_id, &Arns::default());
        assert_eq!(r.command_id, "set-temp");
        assert_eq!(
            r.command_arn,
            "arn:aws:iot:local:000000000000:command/set-temp"
        );
        let u = update_command_response(command);
        assert_eq!(
            (u.command_id.as_str(), u.description.as_str()),
            ("set-temp", "d")
        );
        assert!(u.deprecated);
        assert_eq!(u.last_updated_at, Some(ts(6, 0)));
    }

    #[test]
    fn update_command_keeps_presence() {
        let u = UpdateCommand::from(pb::UpdateCommandRequest {
            command_id: "c".into(),
            display_name: Some(String::new()),
            description: None,
            deprecated: Some(false),
        });
        assert_eq!(u.display_name.as_deref(), Some(""));
        assert_eq!(u.description, None);
        assert_eq!(u.deprecated, Some(false));
        let none = UpdateCommand::from(pb::UpdateCommandRequest::default());
        assert_eq!(none, UpdateCommand::default());
    }
}
