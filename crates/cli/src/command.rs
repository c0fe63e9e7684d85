//! `fleetcmd command create|get|list|update|delete`: the command registry.

use std::collections::HashMap;
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ArgGroup;
use fleetcmd_contracts::pb;
use tonic::Status;

use super::render::{self, KeyValues};
use super::{Api, Output, SortArg, collect_pages, params};

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
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
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
    /// Page size, 1–100 (server default 25).
    #[arg(long, value_name = "N")]
    pub max_results: Option<i32>,
    /// Continue from a previous page.
    #[arg(long, value_name = "TOKEN")]
    pub next_token: Option<String>,
    /// Only commands with a parameter of this name.
    #[arg(long, value_name = "NAME")]
    pub parameter_name: Option<String>,
    /// By creation time.
    #[arg(long, value_enum)]
    pub sort: Option<SortArg>,
    /// Follow next_token to the end and print everything.
    #[arg(long)]
    pub all: bool,
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
    #[arg(long, value_name = "TEXT")]
    pub display_name: Option<String>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
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
            display_name: self.display_name.clone().unwrap_or_default(),
            description: self.description.clone().unwrap_or_default(),
            payload,
            payload_template: template.unwrap_or_default(),
            preprocessor,
            mandatory_parameters,
            tags,
        })
    }
}

impl ListArgs {
    pub fn to_request(&self) -> pb::ListCommandsRequest {
        pb::ListCommandsRequest {
            max_results: self.max_results.unwrap_or(0),
            next_token: self.next_token.clone().unwrap_or_default(),
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
            display_name: self.display_name.clone(),
            description: self.description.clone(),
            deprecated: self.deprecated,
        }
    }
}

// ---------------------------------------------------------------------------------------
// One function per verb

pub async fn create(
    api: &Api,
    request: pb::CreateCommandRequest,
) -> Result<pb::CreateCommandResponse, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.create_command(request).await
    })
    .await
}

pub async fn get(api: &Api, command_id: &str) -> Result<pb::Command, Status> {
    let request = pb::GetCommandRequest {
        command_id: command_id.to_string(),
    };
    api.call(api.registry(), request, |mut client, request| async move {
        client.get_command(request).await
    })
    .await
}

/// One page.
pub async fn list(
    api: &Api,
    request: pb::ListCommandsRequest,
) -> Result<pb::ListCommandsResponse, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.list_commands(request).await
    })
    .await
}

/// Every page from `request.next_token` on, concatenated (the result's `next_token` is empty).
pub async fn list_all(
    api: &Api,
    mut request: pb::ListCommandsRequest,
) -> anyhow::Result<pb::ListCommandsResponse> {
    let commands = collect_pages(request.next_token.clone(), |next_token| {
        request.next_token = next_token;
        let page = list(api, request.clone());
        async move { page.await.map(|page| (page.commands, page.next_token)) }
    })
    .await?;
    Ok(pb::ListCommandsResponse {
        commands,
        next_token: String::new(),
    })
}

pub async fn update(
    api: &Api,
    request: pb::UpdateCommandRequest,
) -> Result<pb::UpdateCommandResponse, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.update_command(request).await
    })
    .await
}

pub async fn delete(api: &Api, command_id: &str) -> Result<pb::DeleteCommandResponse, Status> {
    let request = pb::DeleteCommandRequest {
        command_id: command_id.to_string(),
    };
    api.call(api.registry(), request, |mut client, request| async move {
        client.delete_command(request).await
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The CLI: request from flags, call, print

pub async fn run(
    api: &Api,
    cmd: CommandCmd,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match cmd {
        CommandCmd::Create(args) => {
            let response = create(api, args.to_request()?).await?;
            match output {
                Output::Json => print_json(out, &render::create_command_json(&response))?,
                Output::Text => writeln!(
                    out,
                    "created {} ({})",
                    response.command_id, response.command_arn
                )?,
            }
        }
        CommandCmd::Get(args) => {
            let command = get(api, &args.command_id).await?;
            match output {
                Output::Json => print_json(out, &render::command_json(&command))?,
                Output::Text => write!(out, "{}", render::command_text(&command))?,
            }
        }
        CommandCmd::List(args) => {
            let request = args.to_request();
            let response = if args.all {
                list_all(api, request).await?
            } else {
                list(api, request).await?
            };
            match output {
                Output::Json => print_json(out, &render::list_commands_json(&response))?,
                Output::Text => {
                    write!(
                        out,
                        "{}",
                        render::command_list_table(&response.commands).render()
                    )?;
                    if !response.next_token.is_empty() {
                        writeln!(out, "next token: {}", response.next_token)?;
                    }
                }
            }
        }
        CommandCmd::Update(args) => {
            let response = update(api, args.to_request()).await?;
            match output {
                Output::Json => print_json(out, &render::update_command_json(&response))?,
                Output::Text => {
                    let mut kv = KeyValues::new();
                    kv.add("command_id", &response.command_id)
                        .add("display_name", &response.display_name)
                        .add("description", &response.description)
                        .add("deprecated", response.deprecated.to_string())
                        .add(
                            "last_updated_at",
                            render::time_full(response.last_updated_at.as_ref()),
                        );
                    write!(out, "{}", kv.render())?;
                }
            }
        }
        CommandCmd::Delete(args) => {
            let response = delete(api, &args.command_id).await?;
            match output {
                Output::Json => print_json(out, &render::delete_command_json(&response))?,
                Output::Text => writeln!(out, "{}", delete_text(&response))?,
            }
        }
    }
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

/// One JSON object on one line.
pub(crate) fn print_json(out: &mut dyn Write, value: &serde_json::Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CommandCmd,
    }

    fn parse(args: &[&str]) -> Result<CommandCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("command").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}")) {
            CommandCmd::Create(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_static_payload() {
        let req = create_args(&[
            "create",
            "--id",
            "reboot",
            "--payload",
            "{\"op\":\"reboot\"}",
            "--content-type",
            "application/json",
            "--display-name",
            "Reboot",
            "--tag",
            "env=prod",
            "--tag",
            "team=",
        ])
        .to_request()
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
        let req = create_args(&[
            "create",
            "--id",
            "heat",
            "--template",
            "{\"t\":\"${aws:iot:commandexecution::parameter:temp}\"}",
            "--output-format",
            "cbor",
            "--parameters",
            r#"[{"name":"temp","type":"INTEGER","defaultValue":{"i":20}}]"#,
        ])
        .to_request()
        .unwrap();
        assert!(req.payload.is_none());
        assert!(req.payload_template.contains("parameter:temp"));
        assert_eq!(
            req.preprocessor
                .unwrap()
                .aws_json_substitution
                .unwrap()
                .output_format,
            pb::OutputFormat::Cbor as i32
        );
        assert_eq!(req.mandatory_parameters.len(), 1);
        assert_eq!(req.mandatory_parameters[0].name, "temp");

        // The output format defaults to JSON, stated explicitly on the wire.
        let req = create_args(&["create", "--id", "x", "--template", "{}"])
            .to_request()
            .unwrap();
        assert_eq!(
            req.preprocessor
                .unwrap()
                .aws_json_substitution
                .unwrap()
                .output_format,
            pb::OutputFormat::Json as i32
        );
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

        let req = create_args(&[
            "create",
            "--id",
            "b",
            "--payload-file",
            payload.to_str().unwrap(),
        ])
        .to_request()
        .unwrap();
        assert_eq!(req.payload.unwrap().content, vec![0u8, 159, 146, 150]);

        let req = create_args(&[
            "create",
            "--id",
            "t",
            "--template-file",
            template.to_str().unwrap(),
            "--parameters-file",
            params.to_str().unwrap(),
        ])
        .to_request()
        .unwrap();
        assert_eq!(req.payload_template, "{\"a\":1}");
        assert_eq!(req.mandatory_parameters[0].name, "a");

        let err = create_args(&[
            "create",
            "--id",
            "t",
            "--template-file",
            payload.to_str().unwrap(),
        ])
        .to_request()
        .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        let missing = dir.join("missing.json");
        let err = create_args(&[
            "create",
            "--id",
            "t",
            "--payload-file",
            missing.to_str().unwrap(),
        ])
        .to_request()
        .unwrap_err();
        assert!(err.to_string().contains("--payload-file: reading"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_flag_combinations_are_checked() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["create", "--id", "x"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["create", "--id", "x", "--payload", "a", "--template", "{}"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&[
                "create",
                "--id",
                "x",
                "--payload",
                "a",
                "--payload-file",
                "f"
            ]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&[
                "create",
                "--id",
                "x",
                "--template",
                "{}",
                "--content-type",
                "a/b"
            ]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "create",
                "--id",
                "x",
                "--payload",
                "a",
                "--parameters",
                "[]"
            ]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "create",
                "--id",
                "x",
                "--payload",
                "a",
                "--output-format",
                "cbor"
            ]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&[
                "create",
                "--id",
                "x",
                "--template",
                "{}",
                "--parameters",
                "[]",
                "--parameters-file",
                "p"
            ]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["create", "--id", "x", "--payload", "a", "--tag", "novalue"]),
            ErrorKind::ValueValidation
        );
        let err = create_args(&[
            "create",
            "--id",
            "x",
            "--payload",
            "a",
            "--tag",
            "k=1",
            "--tag",
            "k=2",
        ])
        .to_request()
        .unwrap_err();
        assert_eq!(err.to_string(), "--tag k is given more than once");
        let err = create_args(&[
            "create",
            "--id",
            "x",
            "--template",
            "{}",
            "--parameters",
            "[{\"name\":1}]",
        ])
        .to_request()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "parameters[0].name: expected a string, got 1"
        );
    }

    #[test]
    fn list_update_delete_parse() {
        let CommandCmd::List(list) = parse(&[
            "list",
            "--max-results",
            "10",
            "--sort",
            "asc",
            "--parameter-name",
            "temp",
            "--all",
        ])
        .unwrap() else {
            panic!()
        };
        let req = list.to_request();
        assert_eq!(req.max_results, 10);
        assert_eq!(req.sort_order, pb::SortOrder::Ascending as i32);
        assert_eq!(req.command_parameter_name, "temp");
        assert!(list.all);
        let CommandCmd::List(list) = parse(&["list"]).unwrap() else {
            panic!()
        };
        assert_eq!(list.to_request(), pb::ListCommandsRequest::default());

        let CommandCmd::Update(update) =
            parse(&["update", "reboot", "--deprecated", "true"]).unwrap()
        else {
            panic!()
        };
        let req = update.to_request();
        assert_eq!(req.command_id, "reboot");
        assert_eq!(req.deprecated, Some(true));
        assert_eq!(req.display_name, None);
        assert!(parse(&["update", "reboot"]).is_err(), "nothing to change");
        assert!(parse(&["update", "reboot", "--deprecated", "maybe"]).is_err());

        let CommandCmd::Delete(delete) = parse(&["delete", "reboot"]).unwrap() else {
            panic!()
        };
        assert_eq!(delete.command_id, "reboot");
    }

    #[test]
    fn delete_outcomes_read_well() {
        assert_eq!(
            delete_text(&pb::DeleteCommandResponse {
                status_code: 204,
                deletion_scheduled_at: None
            }),
            "deleted"
        );
        assert_eq!(
            delete_text(&pb::DeleteCommandResponse {
                status_code: 202,
                deletion_scheduled_at: Some(prost_types::Timestamp {
                    seconds: 1_730_430_000,
                    nanos: 0
                })
            }),
            "deletion scheduled at 2024-11-01T03:00:00Z"
        );
    }
}
