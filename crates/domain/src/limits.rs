//! Every limit of AWS IoT Commands in one place (listed for users in
//! `docs/device-protocol.md`, Limits).

/// commandId and executionId: 1–64 chars of `[a-zA-Z0-9_-]`.
pub const ID_MAX_CHARS: usize = 64;
/// Thing names and client ids: 1–128 chars.
pub const TARGET_ID_MAX_CHARS: usize = 128;
pub const DISPLAY_NAME_MAX_CHARS: usize = 64;
pub const DESCRIPTION_MAX_CHARS: usize = 2028;
/// Static payloads: 32 KB.
pub const PAYLOAD_MAX_BYTES: usize = 32 * 1024;
/// Payload templates: 32,768 chars.
pub const TEMPLATE_MAX_CHARS: usize = 32_768;
pub const PARAMETER_NAME_MAX_CHARS: usize = 192;
pub const CONDITION_OPERANDS_MAX: usize = 10;
pub const RESULT_KEY_MAX_CHARS: usize = 32;
pub const REASON_CODE_MAX_CHARS: usize = 64;
pub const REASON_DESCRIPTION_MAX_CHARS: usize = 1024;
pub const CLIENT_TOKEN_MAX_CHARS: usize = 64;
pub const TAG_KEY_MAX_CHARS: usize = 128;
pub const TAG_VALUE_MAX_CHARS: usize = 256;
pub const TAGS_MAX: usize = 50;
/// Parameters per command (the reference sets no number; we cap it to keep payloads sane).
pub const PARAMETERS_MAX: usize = 100;
/// Execution timeout: default 10 s, 1 s – 12 h.
pub const TIMEOUT_DEFAULT_SECS: u64 = 10;
pub const TIMEOUT_MIN_SECS: u64 = 1;
pub const TIMEOUT_MAX_SECS: u64 = 43_200;
/// Page size: 1–100; ListCommands defaults to 25.
pub const PAGE_SIZE_MAX: u32 = 100;
pub const PAGE_SIZE_DEFAULT: u32 = 25;
/// Deletion wait for commands not deprecated for long enough (12 h, configurable).
pub const DELETION_WAIT_DEFAULT_SECS: u64 = 43_200;
/// Execution record retention (six months).
pub const RETENTION_DEFAULT_SECS: u64 = 183 * 24 * 3600;
/// Device update message size we accept (the MQTT body of a response).
pub const DEVICE_UPDATE_MAX_BYTES: usize = 128 * 1024;
/// Result entries per execution (the reference only says "at least 1").
pub const RESULT_ENTRIES_MAX: usize = 100;
/// How long an idempotency token is remembered after its execution settles.
pub const CLIENT_TOKEN_WINDOW_SECS: u64 = 24 * 3600;
