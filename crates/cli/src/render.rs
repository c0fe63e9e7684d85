//! Output: aligned tables and `key  value` blocks for people, JSON for machines.
//!
//! JSON objects use the proto field names in snake_case; enums are their proto names
//! (`SUCCEEDED`), timestamps RFC 3339 in UTC, bytes base64, parameter and result values
//! `{"i": 20}` / `{"b": true}` as on the device protocol. Every field is present (unset
//! messages are `null`) so scripts can rely on the keys.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fleetcmd_contracts::pb;
use prost_types::Timestamp;
use serde_json::{Value as Json, json};

use super::timefmt;

/// Shown for empty or unset cells.
pub const NONE: &str = "-";

/// A table with aligned columns: two spaces between columns, no trailing blanks.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, empty cells show as `-`.
    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    /// Adds one row per item, its cells made by `cells`.
    pub fn with_rows<T>(mut self, items: &[T], cells: impl Fn(&T) -> Vec<String>) -> Self {
        self.rows.extend(items.iter().map(cells));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let cell = |row: &Vec<String>, i: usize| -> String {
            match row.get(i).map(|c| sanitize(c)) {
                Some(c) if !c.is_empty() => c,
                _ => NONE.to_string(),
            }
        };
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(width(&cell(row, i)));
            }
        }
        let mut out = String::new();
        let mut line = |cells: Vec<String>| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                text.push_str(c);
                if i + 1 < columns {
                    let pad = widths[i] - width(c) + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(self.headers.clone());
        for row in &self.rows {
            line((0..columns).map(|i| cell(row, i)).collect());
        }
        out
    }
}

/// `key  value` lines with the values aligned.
#[derive(Debug, Clone, Default)]
pub struct KeyValues {
    pairs: Vec<(String, String)>,
}

impl KeyValues {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.pairs.push((key.to_string(), value.into()));
        self
    }

    pub fn render(&self) -> String {
        let w = self.pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in &self.pairs {
            let value = sanitize(value);
            let value = if value.is_empty() {
                NONE.to_string()
            } else {
                value
            };
            out.push_str(key);
            out.extend(std::iter::repeat_n(' ', w - width(key) + 2));
            out.push_str(&value);
            out.push('\n');
        }
        out
    }
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// Control characters would break the alignment (or the terminal): show them escaped.
fn sanitize(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        text.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Text forms of values

/// A table cell for a timestamp: RFC 3339 to the second, or `-`.
pub fn time_cell(ts: Option<&Timestamp>) -> String {
    ts.map(timefmt::rfc3339_seconds).unwrap_or_default()
}

/// A full-precision timestamp, or `-`.
pub fn time_full(ts: Option<&Timestamp>) -> String {
    ts.map(timefmt::rfc3339).unwrap_or_default()
}

/// `thing/lamp`, `client/c-1`.
pub fn target_text(target: Option<&pb::Target>) -> String {
    match target {
        None => String::new(),
        Some(t) => {
            let kind = match pb::TargetKind::try_from(t.kind) {
                Ok(pb::TargetKind::Thing) => "thing",
                Ok(pb::TargetKind::Client) => "client",
                _ => "unknown",
            };
            format!("{kind}/{}", t.id)
        }
    }
}

pub fn status_name(status: i32) -> String {
    match pb::ExecutionStatus::try_from(status) {
        Ok(pb::ExecutionStatus::Unspecified) => String::new(),
        Ok(s) => s.as_str_name().to_string(),
        Err(_) => format!("UNKNOWN({status})"),
    }
}

fn enum_json(name: Option<&'static str>, raw: i32) -> Json {
    match name {
        Some(n) => Json::String(n.to_string()),
        None => Json::from(raw),
    }
}

/// `CODE: description`, `CODE`, or empty.
pub fn reason_text(reason: Option<&pb::StatusReason>) -> String {
    match reason {
        None => String::new(),
        Some(r) if r.reason_description.is_empty() => r.reason_code.clone(),
        Some(r) => format!("{}: {}", r.reason_code, r.reason_description),
    }
}

/// The `--param` form: `i:20`, `s:hello`, `bin:AAEC`.
pub fn parameter_value_text(value: &pb::ParameterValue) -> String {
    use pb::parameter_value::Value;
    match &value.value {
        None => "unset".to_string(),
        Some(Value::S(s)) => format!("s:{s}"),
        Some(Value::B(b)) => format!("b:{b}"),
        Some(Value::I(i)) => format!("i:{i}"),
        Some(Value::L(l)) => format!("l:{l}"),
        Some(Value::D(d)) => format!("d:{d}"),
        Some(Value::Bin(bin)) => format!("bin:{}", BASE64.encode(bin)),
        Some(Value::Ul(ul)) => format!("ul:{ul}"),
    }
}

pub fn result_value_text(value: &pb::ResultValue) -> String {
    use pb::result_value::Value;
    match &value.value {
        None => "unset".to_string(),
        Some(Value::S(s)) => format!("s:{s}"),
        Some(Value::B(b)) => format!("b:{b}"),
        Some(Value::Bin(bin)) => format!("bin:{}", BASE64.encode(bin)),
    }
}

/// `a=i:1, b=s:x`, sorted by name.
pub fn map_text<V>(map: &HashMap<String, V>, text: impl Fn(&V) -> String) -> String {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
        .into_iter()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `IN_RANGE [10, 30]`, `IN_SET {a, b}`, `LESS_THAN 5`, `EQUALS "on"`.
pub fn condition_text(condition: &pb::ValueCondition) -> String {
    use pb::condition_operand::Operand;
    let op = pb::ComparisonOperator::try_from(condition.comparison_operator)
        .map(|o| o.as_str_name().to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({})", condition.comparison_operator));
    let operand = match condition.operand.as_ref().and_then(|o| o.operand.as_ref()) {
        None => "?".to_string(),
        Some(Operand::Number(n)) => n.clone(),
        Some(Operand::String(s)) => format!("{s:?}"),
        Some(Operand::Numbers(l)) => format!("{{{}}}", l.values.join(", ")),
        Some(Operand::Strings(l)) => format!(
            "{{{}}}",
            l.values
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Operand::NumberRange(r)) => format!("[{}, {}]", r.min, r.max),
    };
    format!("{op} {operand}")
}

/// A payload as text when it is printable UTF-8, otherwise as `base64:...`.
pub fn payload_text(content: &[u8]) -> String {
    match std::str::from_utf8(content) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            text.to_string()
        }
        _ => format!("base64:{}", BASE64.encode(content)),
    }
}

// ---------------------------------------------------------------------------------------
// JSON

pub fn timestamp_json(ts: Option<&Timestamp>) -> Json {
    ts.map_or(Json::Null, |t| Json::String(timefmt::rfc3339(t)))
}

pub fn target_json(target: Option<&pb::Target>) -> Json {
    target.map_or(Json::Null, |t| {
        json!({
            "kind": enum_json(pb::TargetKind::try_from(t.kind).ok().map(|k| k.as_str_name()), t.kind),
            "id": t.id,
        })
    })
}

pub fn status_json(status: i32) -> Json {
    enum_json(
        pb::ExecutionStatus::try_from(status)
            .ok()
            .map(|s| s.as_str_name()),
        status,
    )
}

pub fn reason_json(reason: Option<&pb::StatusReason>) -> Json {
    reason.map_or(
        Json::Null,
        |r| json!({"reason_code": r.reason_code, "reason_description": r.reason_description}),
    )
}

pub fn parameter_value_json(value: &pb::ParameterValue) -> Json {
    use pb::parameter_value::Value;
    match &value.value {
        None => json!({}),
        Some(Value::S(s)) => json!({"s": s}),
        Some(Value::B(b)) => json!({"b": b}),
        Some(Value::I(i)) => json!({"i": i}),
        Some(Value::L(l)) => json!({"l": l}),
        Some(Value::D(d)) => json!({"d": d}),
        Some(Value::Bin(bin)) => json!({"bin": BASE64.encode(bin)}),
        Some(Value::Ul(ul)) => json!({"ul": ul}),
    }
}

pub fn result_value_json(value: &pb::ResultValue) -> Json {
    use pb::result_value::Value;
    match &value.value {
        None => json!({}),
        Some(Value::S(s)) => json!({"s": s}),
        Some(Value::B(b)) => json!({"b": b}),
        Some(Value::Bin(bin)) => json!({"bin": BASE64.encode(bin)}),
    }
}

pub fn map_json<V>(map: &HashMap<String, V>, value: impl Fn(&V) -> Json) -> Json {
    Json::Object(map.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

fn condition_json(condition: &pb::ValueCondition) -> Json {
    use pb::condition_operand::Operand;
    let operand = match condition.operand.as_ref().and_then(|o| o.operand.as_ref()) {
        None => Json::Null,
        Some(Operand::Number(n)) => json!({"number": n}),
        Some(Operand::Numbers(l)) => json!({"numbers": l.values}),
        Some(Operand::String(s)) => json!({"string": s}),
        Some(Operand::Strings(l)) => json!({"strings": l.values}),
        Some(Operand::NumberRange(r)) => json!({"number_range": {"min": r.min, "max": r.max}}),
    };
    json!({
        "comparison_operator": enum_json(
            pb::ComparisonOperator::try_from(condition.comparison_operator).ok().map(|o| o.as_str_name()),
            condition.comparison_operator,
        ),
        "operand": operand,
    })
}

fn parameter_json(p: &pb::CommandParameter) -> Json {
    json!({
        "name": p.name,
        "type": enum_json(pb::ParameterType::try_from(p.r#type).ok().map(|t| t.as_str_name()), p.r#type),
        "value": p.value.as_ref().map_or(Json::Null, parameter_value_json),
        "default_value": p.default_value.as_ref().map_or(Json::Null, parameter_value_json),
        "value_conditions": p.value_conditions.iter().map(condition_json).collect::<Vec<_>>(),
        "description": p.description,
    })
}

fn output_format(preprocessor: Option<&pb::Preprocessor>) -> Option<i32> {
    preprocessor
        .and_then(|p| p.aws_json_substitution.as_ref())
        .map(|s| s.output_format)
}

fn output_format_name(raw: i32) -> Option<&'static str> {
    pb::OutputFormat::try_from(raw)
        .ok()
        .map(|f| f.as_str_name())
}

pub fn command_json(c: &pb::Command) -> Json {
    json!({
        "command_id": c.command_id,
        "command_arn": c.command_arn,
        "namespace": c.namespace,
        "display_name": c.display_name,
        "description": c.description,
        "payload": c.payload.as_ref().map_or(Json::Null, |p| json!({
            "content": BASE64.encode(&p.content),
            "content_type": p.content_type,
        })),
        "payload_template": c.payload_template,
        "preprocessor": c.preprocessor.as_ref().map_or(Json::Null, |p| json!({
            "aws_json_substitution": p.aws_json_substitution.as_ref().map_or(Json::Null, |s| json!({
                "output_format": enum_json(output_format_name(s.output_format), s.output_format),
            })),
        })),
        "mandatory_parameters": c.mandatory_parameters.iter().map(parameter_json).collect::<Vec<_>>(),
        "tags": map_json(&c.tags, |v| Json::String(v.clone())),
        "created_at": timestamp_json(c.created_at.as_ref()),
        "last_updated_at": timestamp_json(c.last_updated_at.as_ref()),
        "deprecated": c.deprecated,
        "pending_deletion": c.pending_deletion,
        "deletion_scheduled_at": timestamp_json(c.deletion_scheduled_at.as_ref()),
    })
}

pub fn command_summary_json(c: &pb::CommandSummary) -> Json {
    json!({
        "command_arn": c.command_arn,
        "command_id": c.command_id,
        "display_name": c.display_name,
        "deprecated": c.deprecated,
        "created_at": timestamp_json(c.created_at.as_ref()),
        "last_updated_at": timestamp_json(c.last_updated_at.as_ref()),
        "pending_deletion": c.pending_deletion,
    })
}

pub fn list_commands_json(r: &pb::ListCommandsResponse) -> Json {
    json!({
        "commands": r.commands.iter().map(command_summary_json).collect::<Vec<_>>(),
        "next_token": r.next_token,
    })
}

pub fn create_command_json(r: &pb::CreateCommandResponse) -> Json {
    json!({"command_id": r.command_id, "command_arn": r.command_arn})
}

pub fn update_command_json(r: &pb::UpdateCommandResponse) -> Json {
    json!({
        "command_id": r.command_id,
        "display_name": r.display_name,
        "description": r.description,
        "deprecated": r.deprecated,
        "last_updated_at": timestamp_json(r.last_updated_at.as_ref()),
    })
}

pub fn delete_command_json(r: &pb::DeleteCommandResponse) -> Json {
    json!({
        "status_code": r.status_code,
        "deletion_scheduled_at": timestamp_json(r.deletion_scheduled_at.as_ref()),
    })
}

pub fn execution_json(e: &pb::CommandExecution) -> Json {
    json!({
        "execution_id": e.execution_id,
        "command_id": e.command_id,
        "command_arn": e.command_arn,
        "target": target_json(e.target.as_ref()),
        "target_arn": e.target_arn,
        "status": status_json(e.status),
        "status_reason": reason_json(e.status_reason.as_ref()),
        "result": map_json(&e.result, result_value_json),
        "parameters": map_json(&e.parameters, parameter_value_json),
        "execution_timeout_seconds": e.execution_timeout_seconds,
        "created_at": timestamp_json(e.created_at.as_ref()),
        "last_updated_at": timestamp_json(e.last_updated_at.as_ref()),
        "started_at": timestamp_json(e.started_at.as_ref()),
        "completed_at": timestamp_json(e.completed_at.as_ref()),
        "time_to_live": timestamp_json(e.time_to_live.as_ref()),
        "client_token": e.client_token,
        "terminal": e.terminal,
    })
}

pub fn execution_summary_json(e: &pb::CommandExecutionSummary) -> Json {
    json!({
        "command_arn": e.command_arn,
        "command_id": e.command_id,
        "execution_id": e.execution_id,
        "target": target_json(e.target.as_ref()),
        "target_arn": e.target_arn,
        "status": status_json(e.status),
        "created_at": timestamp_json(e.created_at.as_ref()),
        "started_at": timestamp_json(e.started_at.as_ref()),
        "completed_at": timestamp_json(e.completed_at.as_ref()),
    })
}

pub fn list_executions_json(r: &pb::ListCommandExecutionsResponse) -> Json {
    json!({
        "command_executions": r.command_executions.iter().map(execution_summary_json).collect::<Vec<_>>(),
        "next_token": r.next_token,
    })
}

pub fn execution_event_json(e: &pb::CommandExecutionEvent) -> Json {
    json!({
        "execution_id": e.execution_id,
        "command_id": e.command_id,
        "target": target_json(e.target.as_ref()),
        "status": status_json(e.status),
        "status_reason": reason_json(e.status_reason.as_ref()),
        "result": map_json(&e.result, result_value_json),
        "timestamp": timestamp_json(e.timestamp.as_ref()),
        "terminal": e.terminal,
    })
}

pub fn cancel_json(r: &pb::CancelCommandExecutionResponse) -> Json {
    json!({"execution_id": r.execution_id, "status": status_json(r.status)})
}

// ---------------------------------------------------------------------------------------
// Text renderings of whole responses

pub fn command_text(c: &pb::Command) -> String {
    let mut kv = KeyValues::new();
    kv.add("command_id", &c.command_id)
        .add("command_arn", &c.command_arn)
        .add("namespace", &c.namespace)
        .add("display_name", &c.display_name)
        .add("description", &c.description)
        .add("deprecated", c.deprecated.to_string())
        .add("pending_deletion", c.pending_deletion.to_string());
    if c.pending_deletion || c.deletion_scheduled_at.is_some() {
        kv.add(
            "deletion_scheduled_at",
            time_full(c.deletion_scheduled_at.as_ref()),
        );
    }
    kv.add("created_at", time_full(c.created_at.as_ref()))
        .add("last_updated_at", time_full(c.last_updated_at.as_ref()));
    if let Some(p) = &c.payload {
        kv.add("content_type", &p.content_type)
            .add("payload_bytes", p.content.len().to_string())
            .add("payload", payload_text(&p.content));
    }
    if !c.payload_template.is_empty() {
        let format = output_format(c.preprocessor.as_ref())
            .and_then(output_format_name)
            .unwrap_or("JSON");
        let format = if format == "OUTPUT_FORMAT_UNSPECIFIED" {
            "JSON"
        } else {
            format
        };
        kv.add("output_format", format)
            .add("payload_template", &c.payload_template);
    }
    kv.add("tags", map_text(&c.tags, Clone::clone));
    let mut out = kv.render();
    if !c.mandatory_parameters.is_empty() {
        let mut table = Table::new([
            "NAME",
            "TYPE",
            "VALUE",
            "DEFAULT",
            "CONDITIONS",
            "DESCRIPTION",
        ]);
        for p in &c.mandatory_parameters {
            table.row(vec![
                p.name.clone(),
                pb::ParameterType::try_from(p.r#type)
                    .map(|t| t.as_str_name().to_string())
                    .unwrap_or_else(|_| format!("UNKNOWN({})", p.r#type)),
                p.value
                    .as_ref()
                    .map(parameter_value_text)
                    .unwrap_or_default(),
                p.default_value
                    .as_ref()
                    .map(parameter_value_text)
                    .unwrap_or_default(),
                p.value_conditions
                    .iter()
                    .map(condition_text)
                    .collect::<Vec<_>>()
                    .join("; "),
                p.description.clone(),
            ]);
        }
        out.push_str("\nparameters:\n");
        out.push_str(&table.render());
    }
    out
}

/// The header lines of the command and execution listings.
const COMMAND_COLUMNS: &str =
    "COMMAND_ID DISPLAY_NAME DEPRECATED PENDING_DELETION CREATED_AT LAST_UPDATED_AT";
const EXECUTION_COLUMNS: &str =
    "EXECUTION_ID COMMAND_ID TARGET STATUS CREATED_AT STARTED_AT COMPLETED_AT";

/// A listing for people: the table, then the token of the next page when there is one.
pub fn page_text(table: &Table, next_token: &str) -> String {
    let mut text = table.render();
    if !next_token.is_empty() {
        text.push_str(&format!("next token: {next_token}\n"));
    }
    text
}

pub fn list_commands_text(r: &pb::ListCommandsResponse) -> String {
    page_text(&command_list_table(&r.commands), &r.next_token)
}

pub fn list_executions_text(r: &pb::ListCommandExecutionsResponse) -> String {
    page_text(&execution_list_table(&r.command_executions), &r.next_token)
}

pub fn command_list_table(commands: &[pb::CommandSummary]) -> Table {
    Table::new(COMMAND_COLUMNS.split_whitespace()).with_rows(commands, |c| {
        vec![
            c.command_id.clone(),
            c.display_name.clone(),
            c.deprecated.to_string(),
            c.pending_deletion.to_string(),
            time_cell(c.created_at.as_ref()),
            time_cell(c.last_updated_at.as_ref()),
        ]
    })
}

pub fn update_command_text(r: &pb::UpdateCommandResponse) -> String {
    let mut kv = KeyValues::new();
    kv.add("command_id", &r.command_id)
        .add("display_name", &r.display_name)
        .add("description", &r.description)
        .add("deprecated", r.deprecated.to_string())
        .add("last_updated_at", time_full(r.last_updated_at.as_ref()));
    kv.render()
}

pub fn execution_list_table(executions: &[pb::CommandExecutionSummary]) -> Table {
    Table::new(EXECUTION_COLUMNS.split_whitespace()).with_rows(executions, |e| {
        vec![
            e.execution_id.clone(),
            e.command_id.clone(),
            target_text(e.target.as_ref()),
            status_name(e.status),
            time_cell(e.created_at.as_ref()),
            time_cell(e.started_at.as_ref()),
            time_cell(e.completed_at.as_ref()),
        ]
    })
}

pub fn execution_text(e: &pb::CommandExecution) -> String {
    let status = status_name(e.status);
    let status = if e.terminal {
        format!("{status} (terminal)")
    } else {
        status
    };
    let mut kv = KeyValues::new();
    kv.add("execution_id", &e.execution_id)
        .add("command_id", &e.command_id)
        .add("command_arn", &e.command_arn)
        .add("target", target_text(e.target.as_ref()))
        .add("target_arn", &e.target_arn)
        .add("status", status)
        .add("status_reason", reason_text(e.status_reason.as_ref()))
        .add("parameters", map_text(&e.parameters, parameter_value_text))
        .add("result", map_text(&e.result, result_value_text))
        .add(
            "execution_timeout_seconds",
            e.execution_timeout_seconds.to_string(),
        )
        .add("client_token", &e.client_token)
        .add("created_at", time_full(e.created_at.as_ref()))
        .add("started_at", time_full(e.started_at.as_ref()))
        .add("last_updated_at", time_full(e.last_updated_at.as_ref()))
        .add("completed_at", time_full(e.completed_at.as_ref()))
        .add("time_to_live", time_full(e.time_to_live.as_ref()));
    kv.render()
}

/// One line per watched event:
/// `<time>  <execution>  <command>  <target>  <STATUS>[ (terminal)][  reason][  result]`.
pub fn execution_event_line(e: &pb::CommandExecutionEvent) -> String {
    let mut line = format!(
        "{}  {}  {}  {}  {}",
        match time_full(e.timestamp.as_ref()) {
            t if t.is_empty() => NONE.to_string(),
            t => t,
        },
        e.execution_id,
        e.command_id,
        match target_text(e.target.as_ref()) {
            t if t.is_empty() => NONE.to_string(),
            t => t,
        },
        status_name(e.status),
    );
    if e.terminal {
        line.push_str(" (terminal)");
    }
    let reason = reason_text(e.status_reason.as_ref());
    if !reason.is_empty() {
        line.push_str("  reason=");
        line.push_str(&reason);
    }
    if !e.result.is_empty() {
        line.push_str("  result: ");
        line.push_str(&map_text(&e.result, result_value_text));
    }
    sanitize(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn target(kind: pb::TargetKind, id: &str) -> Option<pb::Target> {
        Some(pb::Target {
            kind: kind as i32,
            id: id.into(),
        })
    }

    fn reason(code: &str, description: &str) -> pb::StatusReason {
        pb::StatusReason {
            reason_code: code.into(),
            reason_description: description.into(),
        }
    }

    #[test]
    fn table_columns_align_without_trailing_blanks() {
        let mut t = Table::new(["ID", "NAME", "STATUS"]);
        t.row(vec!["a".into(), "lämp".into(), "SUCCEEDED".into()]);
        t.row(vec!["long-id".into(), String::new(), "CREATED".into()]);
        t.row(vec!["x".into()]);
        assert_eq!(
            t.render(),
            "ID       NAME  STATUS\n\
             a        lämp  SUCCEEDED\n\
             long-id  -     CREATED\n\
             x        -     -\n"
        );
        let empty = Table::new(["A", "B"]);
        assert!(empty.is_empty());
        assert_eq!(empty.render(), "A  B\n");
    }

    #[test]
    fn control_characters_do_not_break_lines() {
        let mut t = Table::new(["A", "B"]);
        t.row(vec!["x\ny".into(), "z".into()]);
        assert_eq!(t.render(), "A     B\nx\\ny  z\n");
        let mut kv = KeyValues::new();
        kv.add("id", "c1")
            .add("description", "")
            .add("x", "tab\there");
        assert_eq!(
            kv.render(),
            "id           c1\ndescription  -\nx            tab\\there\n"
        );
    }

    #[test]
    fn execution_list_renders_targets_statuses_and_times() {
        let rows = vec![pb::CommandExecutionSummary {
            execution_id: "e-1".into(),
            command_id: "reboot".into(),
            target: target(pb::TargetKind::Client, "c-7"),
            status: pb::ExecutionStatus::InProgress as i32,
            created_at: ts(1_730_430_000),
            started_at: ts(1_730_430_000),
            completed_at: None,
            ..Default::default()
        }];
        let text = execution_list_table(&rows).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("EXECUTION_ID  COMMAND_ID  TARGET      STATUS"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "e-1           reboot      client/c-7  IN_PROGRESS  2024-11-01T03:00:00Z  \
             2024-11-01T03:00:00Z  -"
        );
    }

    #[test]
    fn json_uses_proto_names_base64_and_rfc3339() {
        let e = pb::CommandExecution {
            execution_id: "e-1".into(),
            command_id: "c".into(),
            target: target(pb::TargetKind::Thing, "lamp"),
            status: pb::ExecutionStatus::Succeeded as i32,
            status_reason: Some(reason("OK", "")),
            result: [(
                "blob".to_string(),
                pb::ResultValue {
                    value: Some(pb::result_value::Value::Bin(vec![0, 1, 2])),
                },
            )]
            .into(),
            parameters: [(
                "temp".to_string(),
                pb::ParameterValue {
                    value: Some(pb::parameter_value::Value::I(20)),
                },
            )]
            .into(),
            execution_timeout_seconds: 10,
            created_at: ts(1_730_430_000),
            terminal: true,
            ..Default::default()
        };
        let j = execution_json(&e);
        assert_eq!(j["execution_id"], "e-1");
        assert_eq!(j["target"], json!({"kind": "THING", "id": "lamp"}));
        assert_eq!(j["status"], "SUCCEEDED");
        assert_eq!(j["status_reason"]["reason_code"], "OK");
        assert_eq!(j["result"]["blob"], json!({"bin": "AAEC"}));
        assert_eq!(j["parameters"]["temp"], json!({"i": 20}));
        assert_eq!(j["created_at"], "2024-11-01T03:00:00Z");
        assert_eq!(j["completed_at"], Json::Null);
        assert_eq!(j["terminal"], true);

        let c = pb::Command {
            command_id: "c".into(),
            payload: Some(pb::Payload {
                content: b"{}".to_vec(),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        };
        let j = command_json(&c);
        assert_eq!(
            j["payload"],
            json!({"content": "e30=", "content_type": "application/json"})
        );
        assert_eq!(j["preprocessor"], Json::Null);
        assert_eq!(status_json(99), json!(99));
    }

    #[test]
    fn text_forms_of_values() {
        use pb::parameter_value::Value;
        let pv = |v| pb::ParameterValue { value: Some(v) };
        assert_eq!(parameter_value_text(&pv(Value::I(20))), "i:20");
        assert_eq!(
            parameter_value_text(&pv(Value::Bin(vec![0, 1, 2]))),
            "bin:AAEC"
        );
        assert_eq!(parameter_value_text(&pv(Value::Ul("7".into()))), "ul:7");
        let map: HashMap<String, pb::ParameterValue> = [
            ("b".to_string(), pv(Value::S("x".into()))),
            ("a".to_string(), pv(Value::B(true))),
        ]
        .into();
        assert_eq!(map_text(&map, parameter_value_text), "a=b:true, b=s:x");
        let cond = pb::ValueCondition {
            comparison_operator: pb::ComparisonOperator::InRange as i32,
            operand: Some(pb::ConditionOperand {
                operand: Some(pb::condition_operand::Operand::NumberRange(
                    pb::NumberRange {
                        min: "10".into(),
                        max: "30".into(),
                    },
                )),
            }),
        };
        assert_eq!(condition_text(&cond), "IN_RANGE [10, 30]");
        assert_eq!(payload_text(b"{\"a\":1}\n"), "{\"a\":1}\n");
        assert_eq!(payload_text(&[0xff, 0]), "base64:/wA=");
        assert_eq!(reason_text(Some(&reason("E", "bad"))), "E: bad");
    }

    #[test]
    fn event_lines() {
        // The fields in the order the line prints them.
        let e = pb::CommandExecutionEvent {
            timestamp: Some(Timestamp {
                seconds: 1_730_430_000,
                nanos: 5_000_000,
            }),
            execution_id: "e-1".into(),
            command_id: "reboot".into(),
            target: target(pb::TargetKind::Thing, "lamp"),
            status: pb::ExecutionStatus::Failed as i32,
            terminal: true,
            status_reason: Some(reason("SIMULATED_FAILURE", "")),
            ..Default::default()
        };
        assert_eq!(
            execution_event_line(&e),
            "2024-11-01T03:00:00.005Z  e-1  reboot  thing/lamp  FAILED (terminal)  \
             reason=SIMULATED_FAILURE"
        );
    }
}
