//! `fleetcmd command create|get|list|update|delete`: the command registry.

use std::collections::HashMap;
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ArgGroup;
use fleetcmd_contracts::pb;
use tonic::Status;

use super::render;
use super::{Api, Output, PageArgs, SortArg, list_pages, params};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CommandCmd {
    /// Create a command: a static payload or a JSON payload template with parameters.
    Create(CreateArgs),
    /// Show one command.
    Get(GetArgs),
    /// List commands (newest first by default).
    List(ListArgs),
    /// Change a command's display name, description or deprecation.
    Update(UpdateArgs),
    /// Delete a command (at once if deprecated long enough, otherwise scheduled).
    Delete(DeleteArgs),
}

/// `--content-type` belongs to a static payload, `--output-format` and the parameters to a
/// template; exactly one payload source is required.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(group(
    ArgGroup::new("source")
        .required(true)
        .args(["payload", "payload_file", "template", "template_file"])
))]
#[command(group(ArgGroup::new("payload_source").args(["payload", "payload_file"])))]
#[command(group(ArgGroup::new("template_source").args(["template", "template_file"])))]
pub struct CreateArgs {
    /// The command id: 1–64 of [a-zA-Z0-9_-].
    #[arg(long = "id", value_name = "ID")]
    pub command_id: String,
    #[command(flatten)]
    pub naming: Naming,
    /// Static payload, given inline.
    #[arg(long, value_name = "TEXT")]
    pub payload: Option<String>,
    /// Static payload, read from a file (`-` for stdin); any bytes.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// MIME type of the static payload (default on the server: application/octet-stream).
    #[arg(long, value_name = "MIME", requires = "payload_source")]
    pub content_type: Option<String>,
    /// JSON payload template with ${aws:iot:commandexecution::parameter:<name>} placeholders.
    #[arg(long, value_name = "JSON")]
    pub template: Option<String>,
    /// The payload template, read from a file (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub template_file: Option<PathBuf>,
    /// What the rendered template is sent as.
    #[arg(long, value_enum, requires = "template_source")]
    pub output_format: Option<OutputFormatArg>,
    /// Parameter definitions as a JSON array, e.g.
    /// [{"name":"temp","type":"INTEGER","defaultValue":{"i":20}}].
    #[arg(
        long,
        value_name = "JSON",
        requires = "template_source",
        conflicts_with = "parameters_file"
    )]
    pub parameters: Option<String>,
    /// Parameter definitions read from a JSON file (`-` for stdin).
    #[arg(long, value_name = "PATH", requires = "template_source")]
    pub parameters_file: Option<PathBuf>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// A new execution on a target cancels the target's older ones of this command that
    /// still wait for their device (reason code $SUPERSEDED): the latest wins.
    #[arg(long)]
    pub supersede_pending: bool,
}

/// `--display-name` and `--description`, which `create` sets and `update` changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Naming {
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormatArg {
    Json,
    Cbor,
}

impl From<OutputFormatArg> for pb::OutputFormat {
    fn from(f: OutputFormatArg) -> Self {
        match f {
            OutputFormatArg::Json => Self::Json,
            OutputFormatArg::Cbor => Self::Cbor,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GetArgs {
    #[arg(value_name = "ID")]
    pub command_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub page: PageArgs,
    /// Only commands with a parameter of this name.
    #[arg(long, value_name = "NAME")]
    pub parameter_name: Option<String>,
    /// By creation time.
    #[arg(long, value_enum)]
    pub sort: Option<SortArg>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["display_name", "description", "deprecated"])
))]
pub struct UpdateArgs {
    #[arg(value_name = "ID")]
    pub command_id: String,
    #[command(flatten)]
    pub naming: Naming,
    /// Deprecate (true) or restore (false).
    #[arg(long, value_name = "true|false")]
    pub deprecated: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeleteArgs {
    #[arg(value_name = "ID")]
    pub command_id: String,
}

/// `key=value`; the key must not be empty, the value may be.
pub fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err("expected KEY=VALUE with a non-empty KEY".to_string()),
    }
}

/// Reads a file named on the command line; `-` is stdin.
fn read_input(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .with_context(|| format!("{flag}: reading stdin"))?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))
    }
}

fn read_text(flag: &str, path: &Path) -> anyhow::Result<String> {
    String::from_utf8(read_input(flag, path)?)
        .map_err(|_| anyhow::anyhow!("{flag}: {} is not UTF-8 text", path.display()))
}

impl CreateArgs {
    /// Builds the request, reading the files it names. Shapes are checked here (JSON
    /// syntax, duplicate tags); limits are the server's to enforce.
    pub fn to_request(&self) -> anyhow::Result<pb::CreateCommandRequest> {
        let mut tags = HashMap::with_capacity(self.tags.len());
        for (key, value) in &self.tags {
            if tags.insert(key.clone(), value.clone()).is_some() {
                anyhow::bail!("--tag {key} is given more than once");
            }
        }
        let payload = match (&self.payload, &self.payload_file) {
            (Some(text), _) => Some(text.clone().into_bytes()),
            (None, Some(path)) => Some(read_input("--payload-file", path)?),
            (None, None) => None,
        }
        .map(|content| pb::Payload {
            content,
            content_type: self.content_type.clone().unwrap_or_default(),
        });
        let template = match (&self.template, &self.template_file) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(path)) => Some(read_text("--template-file", path)?),
            (None, None) => None,
        };
        let parameters_text = match (&self.parameters, &self.parameters_file) {
            (Some(text), _) => Some(text.clone()),
            (None, Some(path)) => Some(read_text("--parameters-file", path)?),
            (None, None) => None,
        };
        let mandatory_parameters = match parameters_text {
            Some(text) => params::parse_parameters_json(&text).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let preprocessor = template.as_ref().map(|_| pb::Preprocessor {
            aws_json_substitution: Some(pb::AwsJsonSubstitution {
                output_format: pb::OutputFormat::from(
                    self.output_format.unwrap_or(OutputFormatArg::Json),
                ) as i32,
            }),
        });
        Ok(pb::CreateCommandRequest {
            command_id: self.command_id.clone(),
            namespace: String::new(),
            display_name: self.naming.display_name.clone().unwrap_or_default(),
            description: self.naming.description.clone().unwrap_or_default(),
            payload,
            payload_template: template.unwrap_or_default(),
            preprocessor,
            mandatory_parameters,
            tags,
            supersede_pending: self.supersede_pending,
        })
    }
}

impl ListArgs {
    pub fn to_request(&self) -> pb::ListCommandsRequest {
        pb::ListCommandsRequest {
            max_results: self.page.max_results.unwrap_or(0),
            next_token: self.page.next_token.clone().unwrap_or_default(),
            namespace: String::new(),
            command_parameter_name: self.parameter_name.clone().unwrap_or_default(),
            sort_order: self
                .sort
                .map_or(pb::SortOrder::Unspecified, pb::SortOrder::from)
                as i32,
        }
    }
}

impl UpdateArgs {
    pub fn to_request(&self) -> pb::UpdateCommandRequest {
        pb::UpdateCommandRequest {
            command_id: self.command_id.clone(),
            display_name: self.naming.display_name.clone(),
            description: self.naming.description.clone(),
            deprecated: self.deprecated,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One function per verb

// `list` answers one page; `super::list_pages` follows the tokens for `--all`.
super::unary_verbs! {
    pub create: registry.create_command(pb::CreateCommandRequest) -> pb::CreateCommandResponse;
    pub list: registry.list_commands(pb::ListCommandsRequest) -> pb::ListCommandsResponse;
    pub update: registry.update_command(pb::UpdateCommandRequest) -> pb::UpdateCommandResponse;
    get_request: registry.get_command(pb::GetCommandRequest) -> pb::Command;
    delete_request: registry.delete_command(pb::DeleteCommandRequest) -> pb::DeleteCommandResponse;
}

pub async fn get(api: &Api, command_id: &str) -> Result<pb::Command, Status> {
    let command_id = command_id.to_string();
    get_request(api, pb::GetCommandRequest { command_id }).await
}

pub async fn delete(api: &Api, command_id: &str) -> Result<pb::DeleteCommandResponse, Status> {
    let command_id = command_id.to_string();
    delete_request(api, pb::DeleteCommandRequest { command_id }).await
}

// ---------------------------------------------------------------------------------------
// The CLI: request from flags, call, print

pub async fn run(
    api: &Api,
    cmd: CommandCmd,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (json, text) = match cmd {
        CommandCmd::Create(args) => {
            let response = create(api, args.to_request()?).await?;
            let text = format!(
                "created {} ({})\n",
                response.command_id, response.command_arn
            );
            (render::create_command_json(&response), text)
        }
        CommandCmd::Get(args) => {
            let command = get(api, &args.command_id).await?;
            (
                render::command_json(&command),
                render::command_text(&command),
            )
        }
        CommandCmd::List(args) => {
            let response = list_pages(|r| list(api, r), args.to_request(), args.page.all).await?;
            (
                render::list_commands_json(&response),
                render::list_commands_text(&response),
            )
        }
        CommandCmd::Update(args) => {
            let response = update(api, args.to_request()).await?;
            (
                render::update_command_json(&response),
                render::update_command_text(&response),
            )
        }
        CommandCmd::Delete(args) => {
            let response = delete(api, &args.command_id).await?;
            let text = format!("{}\n", delete_text(&response));
            (render::delete_command_json(&response), text)
        }
    };
    output.print(out, &json, &text)?;
    Ok(())
}

/// `deleted` (204) or `deletion scheduled at <time>` (202).
pub fn delete_text(response: &pb::DeleteCommandResponse) -> String {
    match response.status_code {
        204 => "deleted".to_string(),
        202 => match &response.deletion_scheduled_at {
            Some(at) => format!("deletion scheduled at {}", render::time_full(Some(at))),
            None => "deletion scheduled".to_string(),
        },
        other => format!("delete answered with status code {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<CommandCmd, clap::Error> {
        crate::parse_verb("command", args.iter().copied())
    }

    /// [`parse`] of a command line written as one string (for arguments without spaces).
    fn parse_line(line: &str) -> Result<CommandCmd, clap::Error> {
        parse(&line.split(' ').collect::<Vec<_>>())
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            CommandCmd::Create(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// The request of `create <line>`.
    fn create(line: &str) -> anyhow::Result<pb::CreateCommandRequest> {
        create_args(&line.split(' ').collect::<Vec<_>>()).to_request()
    }

    /// The output format a template command is sent with.
    fn output_format(req: pb::CreateCommandRequest) -> i32 {
        let preprocessor = req.preprocessor.expect("a template has a preprocessor");
        preprocessor.aws_json_substitution.unwrap().output_format
    }

    #[test]
    fn create_static_payload() {
        let req = create(
            "create --id reboot --payload {\"op\":\"reboot\"} --content-type application/json \
             --display-name Reboot --tag env=prod --tag team=",
        )
        .unwrap();
        assert_eq!(req.command_id, "reboot");
        assert_eq!(req.display_name, "Reboot");
        let payload = req.payload.unwrap();
        assert_eq!(payload.content, b"{\"op\":\"reboot\"}");
        assert_eq!(payload.content_type, "application/json");
        assert!(req.payload_template.is_empty() && req.preprocessor.is_none());
        assert_eq!(req.tags.len(), 2);
        assert_eq!(req.tags["team"], "");
    }

    #[test]
    fn create_template_with_parameters() {
        let req = create(
            "create --id heat --template {\"t\":\"${aws:iot:commandexecution::parameter:temp}\"} \
             --output-format cbor \
             --parameters [{\"name\":\"temp\",\"type\":\"INTEGER\",\"defaultValue\":{\"i\":20}}]",
        )
        .unwrap();
        assert!(req.payload.is_none());
        assert!(req.payload_template.contains("parameter:temp"));
        assert_eq!(req.mandatory_parameters.len(), 1);
        assert_eq!(req.mandatory_parameters[0].name, "temp");
        assert_eq!(output_format(req), pb::OutputFormat::Cbor as i32);

        // The output format defaults to JSON, stated explicitly on the wire.
        let req = create("create --id x --template {}").unwrap();
        assert_eq!(output_format(req), pb::OutputFormat::Json as i32);
    }

    #[test]
    fn create_reads_files() {
        let dir = std::env::temp_dir().join(format!("fleetcmd-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let payload = dir.join("p.bin");
        std::fs::write(&payload, [0u8, 159, 146, 150]).unwrap();
        let params = dir.join("params.json");
        std::fs::write(&params, r#"[{"name":"a","type":"STRING"}]"#).unwrap();
        let template = dir.join("t.json");
        std::fs::write(&template, "{\"a\":1}").unwrap();
        let missing = dir.join("missing.json");
        // Paths go in as arguments of their own: a temporary directory may have spaces.
        let with = |flags: &[(&str, &Path)]| {
            let mut args = vec!["create", "--id", "t"];
            for (flag, path) in flags {
                args.extend([*flag, path.to_str().unwrap()]);
            }
            create_args(&args).to_request()
        };

        let req = with(&[("--payload-file", &payload)]).unwrap();
        assert_eq!(req.payload.unwrap().content, vec![0u8, 159, 146, 150]);
        let req = with(&[
            ("--template-file", &template),
            ("--parameters-file", &params),
        ])
        .unwrap();
        assert_eq!(req.payload_template, "{\"a\":1}");
        assert_eq!(req.mandatory_parameters[0].name, "a");
        let err = with(&[("--template-file", &payload)]).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let err = with(&[("--payload-file", &missing)]).unwrap_err();
        assert!(err.to_string().contains("--payload-file: reading"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_flag_combinations_are_checked() {
        let cases = [
            ("--id x", ErrorKind::MissingRequiredArgument),
            (
                "--id x --payload a --template {}",
                ErrorKind::ArgumentConflict,
            ),
            (
                "--id x --payload a --payload-file f",
                ErrorKind::ArgumentConflict,
            ),
            (
                "--id x --template {} --content-type a/b",
                ErrorKind::MissingRequiredArgument,
            ),
            (
                "--id x --payload a --parameters []",
                ErrorKind::MissingRequiredArgument,
            ),
            (
                "--id x --payload a --output-format cbor",
                ErrorKind::MissingRequiredArgument,
            ),
            (
                "--id x --template {} --parameters [] --parameters-file p",
                ErrorKind::ArgumentConflict,
            ),
            (
                "--id x --payload a --tag novalue",
                ErrorKind::ValueValidation,
            ),
        ];
        for (flags, kind) in cases {
            let err = parse_line(&format!("create {flags}")).unwrap_err();
            assert_eq!(err.kind(), kind, "create {flags}");
        }
        let err = create("create --id x --payload a --tag k=1 --tag k=2").unwrap_err();
        assert_eq!(err.to_string(), "--tag k is given more than once");
        let err = create("create --id x --template {} --parameters [{\"name\":1}]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameters[0].name: expected a string, got 1"
        );
    }

    #[test]
    fn list_update_delete_parse() {
        let line = "list --max-results 10 --sort asc --parameter-name temp --all";
        let CommandCmd::List(list) = parse_line(line).unwrap() else {
            panic!()
        };
        let req = list.to_request();
        assert_eq!(req.max_results, 10);
        assert_eq!(req.sort_order, pb::SortOrder::Ascending as i32);
        assert_eq!(req.command_parameter_name, "temp");
        assert!(list.page.all);
        let CommandCmd::List(list) = parse_line("list").unwrap() else {
            panic!()
        };
        assert_eq!(list.to_request(), pb::ListCommandsRequest::default());

        let CommandCmd::Update(update) = parse_line("update reboot --deprecated true").unwrap()
        else {
            panic!()
        };
        let req = update.to_request();
        assert_eq!(req.command_id, "reboot");
        assert_eq!(req.deprecated, Some(true));
        assert_eq!(req.display_name, None);
        assert!(parse_line("update reboot").is_err(), "nothing to change");
        assert!(parse_line("update reboot --deprecated maybe").is_err());

        let CommandCmd::Delete(delete) = parse_line("delete reboot").unwrap() else {
            panic!()
        };
        assert_eq!(delete.command_id, "reboot");
    }

    #[test]
    fn delete_outcomes_read_well() {
        let response = |status_code, seconds: Option<i64>| pb::DeleteCommandResponse {
            status_code,
            deletion_scheduled_at: seconds
                .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        };
        assert_eq!(delete_text(&response(204, None)), "deleted");
        assert_eq!(
            delete_text(&response(202, Some(1_730_430_000))),
            "deletion scheduled at 2024-11-01T03:00:00Z"
        );
    }
}
