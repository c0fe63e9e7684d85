//! A device's identity, `things/<thing name>` or `clients/<client id>`: the string a device
//! certificate carries as its subject CN (so Mosquitto's `use_identity_as_username` sees it as
//! the username) and the key under which passwords and certificates are registered.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The longest thing name or client id, as for command targets.
const NAME_MAX_CHARS: usize = 128;

/// Who a device is. The naming rules are those of command targets (`fleetcmd_domain::Target`):
/// thing names match `[a-zA-Z0-9:_-]+`, client ids are one MQTT topic level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceIdentity {
    Thing(String),
    Client(String),
}

impl DeviceIdentity {
    /// A thing, by thing name; checks the naming rules.
    pub fn thing(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check(&name, "things/", |c| {
            c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
        })?;
        Ok(Self::Thing(name))
    }

    /// A bare MQTT client, by client id; checks the naming rules.
    pub fn client(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check(&id, "clients/", |c| {
            !(c.is_control() || c.is_whitespace() || matches!(c, '/' | '+' | '#'))
        })?;
        Ok(Self::Client(id))
    }

    /// Parses `things/<name>` or `clients/<id>`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once('/') {
            Some(("things", name)) => Self::thing(name),
            Some(("clients", id)) => Self::client(id),
            _ => Err(Error::InvalidIdentity {
                value: s.to_owned(),
                reason: "expected things/<name> or clients/<id>",
            }),
        }
    }

    /// `things/<name>` or `clients/<id>`.
    pub fn as_str(&self) -> String {
        self.to_string()
    }

    /// The thing name or client id alone.
    pub fn name(&self) -> &str {
        match self {
            Self::Thing(s) | Self::Client(s) => s,
        }
    }
}

fn check(name: &str, prefix: &str, allowed: impl Fn(char) -> bool) -> Result<()> {
    let err = |reason| Error::InvalidIdentity {
        value: format!("{prefix}{name}"),
        reason,
    };
    if name.is_empty() {
        return Err(err("the name must not be empty"));
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(err("the name must be at most 128 characters"));
    }
    if !name.chars().all(allowed) {
        return Err(err(if prefix == "things/" {
            "a thing name must match [a-zA-Z0-9:_-]+"
        } else {
            "a client id must not contain '/', '+', '#', whitespace or control characters"
        }));
    }
    Ok(())
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Thing(name) => write!(f, "things/{name}"),
            Self::Client(id) => write!(f, "clients/{id}"),
        }
    }
}

impl FromStr for DeviceIdentity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_kinds() {
        let thing = DeviceIdentity::parse("things/lamp-1").unwrap();
        assert_eq!(thing, DeviceIdentity::Thing("lamp-1".into()));
        assert_eq!(thing.as_str(), "things/lamp-1");
        assert_eq!(thing.name(), "lamp-1");
        let client: DeviceIdentity = "clients/sensor.7@site".parse().unwrap();
        assert_eq!(client, DeviceIdentity::Client("sensor.7@site".into()));
        assert_eq!(client.to_string(), "clients/sensor.7@site");
        assert_eq!(
            DeviceIdentity::parse("things/a:b_c").unwrap().name(),
            "a:b_c"
        );
    }

    #[test]
    fn rejects_bad_prefixes_and_names() {
        for bad in [
            "lamp-1",
            "thing/lamp-1",
            "things/",
            "things/a b",
            "things/a.b",
            "things/a/b",
            "clients/a/b",
            "clients/a+",
            "clients/#",
            "clients/a\tb",
            "clients/",
        ] {
            assert!(
                matches!(
                    DeviceIdentity::parse(bad),
                    Err(Error::InvalidIdentity { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
        assert!(DeviceIdentity::thing("a".repeat(128)).is_ok());
        assert!(DeviceIdentity::thing("a".repeat(129)).is_err());
    }
}
