//! API client verbs: the `command`, `exec` and `thing` subcommands of the `fleetcmd` binary.
//!
//! Each verb is one `pub async fn` over the generated tonic clients (so tests and tools can
//! call it directly) plus a `run` that turns parsed flags into a request and prints the
//! answer as an aligned table or, with `--json`, as JSON objects keyed by the proto field
//! names. Every call goes through [`retry_unavailable`]: UNAVAILABLE means "try again"
//! (no shard owner yet, a server restarting), so it is retried with capped exponential
//! backoff; every other status is final and is printed as `CODE: message`.

pub mod cas;
pub mod command;
pub mod credentials;
pub mod exec;
pub mod groups;
pub mod params;
pub mod presence;
pub mod render;
pub mod rollout;
pub mod thing;
pub mod timefmt;

#[cfg(test)]
mod fake_server_tests;

/// Parses `args` as the subcommands of `verb`, the way the binary would (for the verbs' tests).
#[cfg(test)]
fn parse_verb<'a, C: clap::Subcommand>(
    verb: &'a str,
    args: impl IntoIterator<Item = &'a str>,
) -> Result<C, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli<C: clap::Subcommand> {
        #[command(subcommand)]
        cmd: C,
    }
    Cli::<C>::try_parse_from(std::iter::once(verb).chain(args)).map(|c| c.cmd)
}

use std::future::Future;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use fleetcmd_contracts::pb;
use pb::command_dispatcher_client::CommandDispatcherClient;
use pb::command_registry_client::CommandRegistryClient;
use pb::rollouts_client::RolloutsClient;
use pb::thing_registry_client::ThingRegistryClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Where the API is when neither `--endpoint` nor `FLEETCMD_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// The global client flags (accepted before or after the subcommand).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Client options")]
pub struct ClientArgs {
    /// gRPC endpoint of the fleetcmd API (`http://host:port`; the scheme may be left out).
    #[arg(
        long,
        global = true,
        env = "FLEETCMD_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        value_name = "URL"
    )]
    pub endpoint: String,
    /// gRPC endpoint of the dispatcher API (start, cancel) when it is not served at
    /// `--endpoint` — in a cluster the registry and the dispatcher are separate services.
    /// `bench` takes a comma-separated list and spreads its gRPC channels over it.
    #[arg(
        long,
        global = true,
        env = "FLEETCMD_DISPATCHER_ENDPOINT",
        value_name = "URL"
    )]
    pub dispatcher_endpoint: Option<String>,
    /// Bearer token, sent as `authorization: Bearer <token>`.
    #[arg(
        long,
        global = true,
        env = "FLEETCMD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Machine output: JSON objects with the proto field names (snake_case, bytes in base64).
    #[arg(long, global = true)]
    pub json: bool,
    /// Speak TLS to the API, trusting this CA (fleetcmd's `<data-dir>/tls/ca.pem`).
    #[arg(long, global = true, env = "FLEETCMD_CA", value_name = "PATH")]
    pub ca: Option<std::path::PathBuf>,
    /// Speak TLS to the API, trusting the system's CAs (implied by --ca).
    #[arg(long, global = true, env = "FLEETCMD_TLS")]
    pub tls: bool,
    /// A client certificate for mutual TLS (its subject is the caller's identity in the
    /// policy); needs --key.
    #[arg(
        long,
        global = true,
        env = "FLEETCMD_CLIENT_CERT",
        value_name = "PATH",
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    #[arg(
        long,
        global = true,
        env = "FLEETCMD_CLIENT_KEY",
        value_name = "PATH",
        requires = "cert"
    )]
    pub key: Option<std::path::PathBuf>,
}

/// TLS towards the API: the CA to trust (`None`: the system's) and a client certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Option<String>,
    /// Certificate and key PEM, for mutual TLS.
    pub identity: Option<(String, String)>,
}

impl ClientTls {
    fn config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

impl ClientArgs {
    pub fn output(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            Output::Text
        }
    }

    /// A lazily connecting API handle: nothing is dialed until the first call, so a server
    /// that is down shows up as a (retried) UNAVAILABLE rather than a separate error path.
    pub fn api(&self) -> anyhow::Result<Api> {
        let tls = self.client_tls()?;
        let dispatcher = self
            .dispatcher_endpoint
            .as_deref()
            .unwrap_or(&self.endpoint);
        Api::connect(
            &self.endpoint,
            dispatcher,
            self.token.as_deref(),
            tls.as_ref(),
        )
    }

    /// The TLS these flags ask for (`None`: plaintext), with the files read.
    pub fn client_tls(&self) -> anyhow::Result<Option<ClientTls>> {
        if self.ca.is_none() && !self.tls && self.cert.is_none() {
            return Ok(None);
        }
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{flag}: reading {}", path.display()))
        };
        let ca_pem = self.ca.as_deref().map(|p| read("--ca", p)).transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            _ => None,
        };
        Ok(Some(ClientTls { ca_pem, identity }))
    }
}

/// The paging flags every `list` verb takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct PageArgs {
    /// Page size, 1–100 (server default 25).
    #[arg(long, value_name = "N")]
    pub max_results: Option<i32>,
    /// Continue from a previous page.
    #[arg(long, value_name = "TOKEN")]
    pub next_token: Option<String>,
    /// Follow next_token to the end and print everything.
    #[arg(long)]
    pub all: bool,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned tables and `key  value` blocks for people.
    Text,
    /// One JSON object per result (per line for streams).
    Json,
}

impl Output {
    /// Writes `json` on one line with `--json`, otherwise `text` as it is. Each verb builds
    /// both forms of its answer and leaves the choice to this one place.
    pub fn print(
        self,
        out: &mut dyn Write,
        json: &serde_json::Value,
        text: &str,
    ) -> io::Result<()> {
        match self {
            Output::Json => {
                serde_json::to_writer(&mut *out, json)?;
                writeln!(out)
            }
            Output::Text => out.write_all(text.as_bytes()),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request when a token is configured.
#[derive(Debug, Clone, Default)]
pub struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    /// `None` or an empty token sends no header. A token that cannot be a header value
    /// (non-visible ASCII) is refused here rather than failing every call later.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Self::default());
        };
        let mut header = AsciiMetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            anyhow::anyhow!("invalid --token: only visible ASCII characters are allowed")
        })?;
        header.set_sensitive(true);
        Ok(Self {
            header: Some(header),
        })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A channel that dials on first use; `endpoint` may omit the scheme (`https` with TLS,
/// `http` without).
fn lazy_channel(flag: &str, endpoint: &str, tls: Option<&ClientTls>) -> anyhow::Result<Channel> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .with_context(|| format!("invalid {flag} {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.config())
            .with_context(|| format!("TLS for {flag}"))?;
    }
    Ok(endpoint.connect_lazy())
}

/// The channel every client uses: one HTTP/2 connection with the bearer token added.
pub type AuthChannel = InterceptedService<Channel, BearerAuth>;

/// Both API clients over one connection, plus the retry policy for UNAVAILABLE.
/// Cheap to clone (clients share the channel).
#[derive(Debug, Clone)]
pub struct Api {
    registry: CommandRegistryClient<AuthChannel>,
    /// The thing registry, served where the command registry is.
    things: ThingRegistryClient<AuthChannel>,
    /// Rollouts, served where the command registry is.
    rollouts: RolloutsClient<AuthChannel>,
    dispatcher: CommandDispatcherClient<AuthChannel>,
    retry: RetryPolicy,
}

impl Api {
    /// Builds the clients without dialing; the first call connects. `endpoint` may omit
    /// the scheme (`127.0.0.1:50051` means `http://127.0.0.1:50051`).
    pub fn connect_lazy(endpoint: &str, token: Option<&str>) -> anyhow::Result<Self> {
        Self::connect(endpoint, endpoint, token, None)
    }

    /// Like [`connect_lazy`](Self::connect_lazy), with the dispatcher at its own endpoint.
    pub fn connect_lazy_split(
        registry: &str,
        dispatcher: &str,
        token: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::connect(registry, dispatcher, token, None)
    }

    /// The registry (and thing registry) at `registry`, the dispatcher at `dispatcher` (one
    /// connection when they are the same), over TLS when `tls` is given.
    pub fn connect(
        registry: &str,
        dispatcher: &str,
        token: Option<&str>,
        tls: Option<&ClientTls>,
    ) -> anyhow::Result<Self> {
        let auth = BearerAuth::new(token)?;
        let registry_channel = lazy_channel("--endpoint", registry, tls)?;
        if dispatcher == registry {
            return Ok(Self::from_channel(registry_channel, auth));
        }
        let dispatcher = lazy_channel("--dispatcher-endpoint", dispatcher, tls)?;
        let registry = registry_channel;
        Ok(Self {
            registry: CommandRegistryClient::with_interceptor(registry.clone(), auth.clone()),
            things: ThingRegistryClient::with_interceptor(registry.clone(), auth.clone()),
            rollouts: RolloutsClient::with_interceptor(registry, auth.clone()),
            dispatcher: CommandDispatcherClient::with_interceptor(dispatcher, auth),
            retry: RetryPolicy::default(),
        })
    }

    /// Wraps an existing channel (e.g. one connected in a test).
    pub fn from_channel(channel: Channel, auth: BearerAuth) -> Self {
        Self {
            registry: CommandRegistryClient::with_interceptor(channel.clone(), auth.clone()),
            things: ThingRegistryClient::with_interceptor(channel.clone(), auth.clone()),
            rollouts: RolloutsClient::with_interceptor(channel.clone(), auth.clone()),
            dispatcher: CommandDispatcherClient::with_interceptor(channel, auth),
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    /// A registry client (a cheap clone sharing the connection).
    pub fn registry(&self) -> CommandRegistryClient<AuthChannel> {
        self.registry.clone()
    }

    /// A thing registry client (a cheap clone sharing the registry's connection).
    pub fn things(&self) -> ThingRegistryClient<AuthChannel> {
        self.things.clone()
    }

    /// A rollouts client (a cheap clone sharing the registry's connection).
    pub fn rollouts(&self) -> RolloutsClient<AuthChannel> {
        self.rollouts.clone()
    }

    /// A dispatcher client (a cheap clone sharing the connection).
    pub fn dispatcher(&self) -> CommandDispatcherClient<AuthChannel> {
        self.dispatcher.clone()
    }

    /// One RPC under this handle's retry policy (see [`retry_unavailable`]): every attempt
    /// hands `rpc` a fresh clone of `client` (cheap, the connection is shared) and of
    /// `request`, and the answer's message is returned without its metadata.
    pub async fn call<C, Req, Resp, F, Fut>(
        &self,
        client: C,
        request: Req,
        mut rpc: F,
    ) -> Result<Resp, Status>
    where
        C: Clone,
        Req: Clone,
        F: FnMut(C, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        retry_unavailable(&self.retry, || {
            let response = rpc(client.clone(), request.clone());
            async move { Ok(response.await?.into_inner()) }
        })
        .await
    }
}

/// Capped exponential backoff for UNAVAILABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// No wait is longer than this.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub const NONE: Self = Self {
        max_attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The backoff ceiling before retry number `retry` (0-based): `initial · 2^retry`,
    /// capped at `max_backoff`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The actual wait: "equal jitter", between half the ceiling and the ceiling, so that
    /// many clients refused at once do not come back at once.
    fn jittered(&self, retry: u32) -> Duration {
        let ceiling = self.backoff(retry);
        let half = ceiling / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        if spread == 0 {
            return ceiling;
        }
        // Eight random bytes from a v4 UUID are plenty for jitter.
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        half + Duration::from_nanos(random % spread)
    }
}

/// Runs `call` until it returns something other than UNAVAILABLE or the attempts are used
/// up; the last status is returned as is. Only safe for idempotent calls (all of ours are,
/// StartCommandExecution thanks to its client token).
pub async fn retry_unavailable<T, F, Fut>(policy: &RetryPolicy, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut retry = 0;
    loop {
        match call().await {
            Err(status)
                if status.code() == Code::Unavailable && retry + 1 < policy.max_attempts.max(1) =>
            {
                let wait = policy.jittered(retry);
                tracing::debug!(?wait, message = status.message(), "UNAVAILABLE, retrying");
                tokio::time::sleep(wait).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

/// Follows `next_token` from `first_token` to the end and concatenates the pages:
/// `fetch_page` gets a page token and returns that page's items and the next token (empty on
/// the last page). A server that hands back the token it was just given is an error rather
/// than an endless loop.
pub async fn collect_pages<T, F, Fut>(
    first_token: String,
    mut fetch_page: F,
) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut items = Vec::new();
    let mut token = first_token;
    loop {
        let (page, next_token) = fetch_page(token.clone()).await?;
        items.extend(page);
        if next_token.is_empty() {
            return Ok(items);
        }
        anyhow::ensure!(
            next_token != token,
            "the server returned the same next_token twice ({:?}); stopping",
            next_token
        );
        token = next_token;
    }
}

/// A list RPC's request, as far as following `next_token` goes: one impl per list RPC
/// (written by `paged!`), so that [`list_pages`] serves them all.
pub trait Paged: Clone {
    /// The page this request is answered with.
    type Response;
    /// What a page lists.
    type Item;
    fn next_token(&self) -> &str;
    fn set_next_token(&mut self, token: String);
    /// A page's items and the token of the page after it (empty on the last page).
    fn into_page(response: Self::Response) -> (Vec<Self::Item>, String);
    /// One response holding `items`, with no next page.
    fn from_items(items: Vec<Self::Item>) -> Self::Response;
}

/// `impl Paged for <request>`: the response type and the field that holds its items.
macro_rules! paged {
    ($request:ty => $response:path, $items:ident: $item:ty) => {
        impl Paged for $request {
            type Response = $response;
            type Item = $item;
            fn next_token(&self) -> &str {
                &self.next_token
            }
            fn set_next_token(&mut self, token: String) {
                self.next_token = token;
            }
            fn into_page(response: $response) -> (Vec<$item>, String) {
                (response.$items, response.next_token)
            }
            fn from_items($items: Vec<$item>) -> $response {
                $response {
                    $items,
                    next_token: String::new(),
                }
            }
        }
    };
}

paged!(pb::ListCommandsRequest => pb::ListCommandsResponse, commands: pb::CommandSummary);
paged!(
    pb::ListCommandExecutionsRequest => pb::ListCommandExecutionsResponse,
    command_executions: pb::CommandExecutionSummary
);
paged!(pb::ListThingsRequest => pb::ListThingsResponse, things: pb::Thing);
paged!(pb::ListThingsInThingGroupRequest => pb::ListThingsResponse, things: pb::Thing);
paged!(
    pb::ListThingGroupsRequest => pb::ListThingGroupsResponse,
    thing_groups: pb::ThingGroup
);

/// One page (`list(request)`), or with `all` every page from the request's `next_token`
/// on, concatenated into one response whose `next_token` is empty.
pub async fn list_pages<Req, F, Fut>(
    mut list: F,
    mut request: Req,
    all: bool,
) -> anyhow::Result<Req::Response>
where
    Req: Paged,
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Req::Response, Status>>,
{
    if !all {
        return Ok(list(request).await?);
    }
    let items = collect_pages(request.next_token().to_string(), |next_token| {
        request.set_next_token(next_token);
        let page = list(request.clone());
        async move { page.await.map(Req::into_page) }
    })
    .await?;
    Ok(Req::from_items(items))
}

/// Defines one `async fn NAME(api, request)` per line: the unary RPC `METHOD` on the
/// `CLIENT` (registry or dispatcher) under the handle's retry policy. Every verb is that
/// same call, so the list says only which RPC each one is.
macro_rules! unary_verbs {
    ($($vis:vis $name:ident: $client:ident.$method:ident($request:ty) -> $response:ty;)*) => {
        $(
            $vis async fn $name(
                api: &$crate::Api,
                request: $request,
            ) -> Result<$response, tonic::Status> {
                api.call(api.$client(), request, |mut client, request| async move {
                    client.$method(request).await
                })
                .await
            }
        )*
    };
}
pub use fleetcmd_contracts::convert::code_name;
pub(crate) use unary_verbs;

/// `CODE: message`, with the causes of transport failures appended (a refused connection
/// otherwise reads only "tcp connect error").
pub fn describe_status(status: &Status) -> String {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    let mut text = format!("{}: {message}", code_name(status.code()));
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `--thing NAME | --client ID`, optional (a filter).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(multiple = false)]
pub struct TargetFilter {
    /// Only this thing (by thing name).
    #[arg(long, value_name = "NAME")]
    pub thing: Option<String>,
    /// Only this MQTT client (by client id).
    #[arg(long, value_name = "ID")]
    pub client: Option<String>,
}

impl TargetFilter {
    pub fn to_pb(&self) -> Option<pb::Target> {
        match (&self.thing, &self.client) {
            (Some(thing), _) => Some(target(pb::TargetKind::Thing, thing)),
            (None, Some(client)) => Some(target(pb::TargetKind::Client, client)),
            (None, None) => None,
        }
    }
}

/// `--thing NAME | --client ID`, exactly one.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(required = true, multiple = false)]
pub struct RequiredTarget {
    /// The target thing (by thing name).
    #[arg(long, value_name = "NAME")]
    pub thing: Option<String>,
    /// The target MQTT client (by client id).
    #[arg(long, value_name = "ID")]
    pub client: Option<String>,
}

impl RequiredTarget {
    pub fn to_pb(&self) -> pb::Target {
        match (&self.thing, &self.client) {
            (Some(thing), _) => target(pb::TargetKind::Thing, thing),
            // clap's group guarantees one of the two; an empty client id is refused by the server.
            (None, client) => target(pb::TargetKind::Client, client.as_deref().unwrap_or("")),
        }
    }
}

fn target(kind: pb::TargetKind, id: &str) -> pb::Target {
    pb::Target {
        kind: kind as i32,
        id: id.to_string(),
    }
}

/// `--sort asc|desc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortArg {
    #[value(alias = "ascending")]
    Asc,
    #[value(alias = "descending")]
    Desc,
}

impl From<SortArg> for pb::SortOrder {
    fn from(sort: SortArg) -> Self {
        match sort {
            SortArg::Asc => Self::Ascending,
            SortArg::Desc => Self::Descending,
        }
    }
}

/// Parses an execution status: the proto name in any case, `-` for `_` (`in-progress`).
pub fn parse_status(text: &str) -> Result<pb::ExecutionStatus, String> {
    let name = text.trim().to_ascii_uppercase().replace('-', "_");
    match pb::ExecutionStatus::from_str_name(&name) {
        Some(status) if status != pb::ExecutionStatus::Unspecified => Ok(status),
        _ => Err(
            "expected one of CREATED, IN_PROGRESS, SUCCEEDED, FAILED, REJECTED, \
                  TIMED_OUT, CANCELED (any case, - for _)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn code_names_match_grpc_spelling() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        let status = Status::invalid_argument(
            "invalid execution_timeout_seconds: must be between 1 and 43200 seconds, got 0",
        );
        assert_eq!(
            describe_status(&status),
            "INVALID_ARGUMENT: invalid execution_timeout_seconds: must be between 1 and 43200 \
             seconds, got 0"
        );
        assert_eq!(
            describe_status(&Status::new(Code::NotFound, "")),
            "NOT_FOUND: Some requested entity was not found"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(5), Duration::from_secs(2));
        assert_eq!(p.backoff(40), Duration::from_secs(2));
        for retry in 0..6 {
            let wait = p.jittered(retry);
            assert!(
                wait >= p.backoff(retry) / 2 && wait <= p.backoff(retry),
                "{wait:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_until_attempts_run_out() {
        let calls = AtomicU32::new(0);
        let policy = RetryPolicy::default();
        let result: Result<(), Status> = retry_unavailable(&policy, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Status::unavailable("no shard owner")) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_or_a_final_code() {
        let calls = AtomicU32::new(0);
        let result = retry_unavailable(&RetryPolicy::default(), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(Status::unavailable("moving"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), Status> = retry_unavailable(&RetryPolicy::default(), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Status::not_found("no command reboot")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "final codes are not retried"
        );

        let calls = AtomicU32::new(0);
        let _ = retry_unavailable(&RetryPolicy::NONE, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(Status::unavailable("x")) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_end_and_a_repeated_token_stops() {
        let pages = HashMap::from([
            (String::new(), (vec![1, 2], "p2")),
            ("p2".to_string(), (vec![3], "p3")),
            ("p3".to_string(), (vec![], "")),
        ]);
        let requested = std::sync::Mutex::new(Vec::new());
        let fetch = |token: String| {
            requested.lock().unwrap().push(token.clone());
            let (items, next) = pages[&token].clone();
            async move { Ok((items, next.to_string())) }
        };
        assert_eq!(
            collect_pages(String::new(), fetch).await.unwrap(),
            [1, 2, 3]
        );
        assert_eq!(*requested.lock().unwrap(), ["", "p2", "p3"]);
        let from_p2 = collect_pages("p2".to_string(), fetch).await.unwrap();
        assert_eq!(from_p2, [3], "a --next-token to start from is honoured");

        let err = collect_pages(
            "same".to_string(),
            |token| async move { Ok((vec![0], token)) },
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server returned the same next_token twice (\"same\"); stopping"
        );
        let err = collect_pages(String::new(), |_| async {
            Err::<(Vec<u8>, String), _>(Status::not_found("gone"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.downcast_ref::<Status>().unwrap().code(), Code::NotFound);
    }

    #[test]
    fn bearer_tokens_are_checked() {
        assert!(BearerAuth::new(None).unwrap().header.is_none());
        assert!(BearerAuth::new(Some("  ")).unwrap().header.is_none());
        let auth = BearerAuth::new(Some("s3cret")).unwrap();
        assert_eq!(auth.header.unwrap().to_str().unwrap(), "Bearer s3cret");
        let err = BearerAuth::new(Some("bad\ntoken")).unwrap_err();
        assert!(err.to_string().contains("--token"), "{err}");
    }

    #[tokio::test]
    async fn interceptor_adds_the_header() {
        use tonic::service::Interceptor as _;
        let mut auth = BearerAuth::new(Some("t0k")).unwrap();
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer t0k"
        );
        let mut none = BearerAuth::default();
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test]
    async fn endpoints_without_scheme_are_accepted() {
        assert!(Api::connect_lazy("127.0.0.1:50051", None).is_ok());
        assert!(Api::connect_lazy("http://[::1]:50051", Some("t")).is_ok());
        let err = Api::connect_lazy("http://bad host:1", None).unwrap_err();
        assert!(err.to_string().contains("--endpoint"), "{err}");
    }

    #[test]
    fn statuses_parse_leniently() {
        assert_eq!(
            parse_status("succeeded").unwrap(),
            pb::ExecutionStatus::Succeeded
        );
        assert_eq!(
            parse_status("in-progress").unwrap(),
            pb::ExecutionStatus::InProgress
        );
        assert_eq!(
            parse_status("TIMED_OUT").unwrap(),
            pb::ExecutionStatus::TimedOut
        );
        assert_eq!(
            parse_status("canceled").unwrap(),
            pb::ExecutionStatus::Canceled
        );
        let err = parse_status("done").unwrap_err();
        assert!(
            err.contains("IN_PROGRESS") && err.contains("CANCELED"),
            "{err}"
        );
        assert!(parse_status("EXECUTION_STATUS_UNSPECIFIED").is_err());
    }

    #[test]
    fn targets_convert() {
        let t = RequiredTarget {
            thing: Some("lamp".into()),
            client: None,
        };
        assert_eq!(t.to_pb(), target(pb::TargetKind::Thing, "lamp"));
        let f = TargetFilter {
            thing: None,
            client: Some("c-1".into()),
        };
        assert_eq!(f.to_pb(), Some(target(pb::TargetKind::Client, "c-1")));
        assert_eq!(TargetFilter::default().to_pb(), None);
    }
}
