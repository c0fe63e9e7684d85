//! The region and account that ARN-like names (`commandArn`, `targetArn`) are built with.

use fleetcmd_domain::ids::{self, CommandId, Target};

/// The region and account that ARN-like names are built with. fleetcmd has neither; they only
/// keep `commandArn`/`targetArn` shaped as AWS clients and topic rules expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    pub region: String,
    pub account: String,
}

impl Arns {
    pub const DEFAULT_REGION: &'static str = "local";
    pub const DEFAULT_ACCOUNT: &'static str = "000000000000";

    pub fn new(region: impl Into<String>, account: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account: account.into(),
        }
    }

    /// `arn:aws:iot:<region>:<account>:command/<id>`.
    pub fn command(&self, id: &CommandId) -> String {
        ids::command_arn(&self.region, &self.account, id)
    }

    /// `arn:aws:iot:<region>:<account>:thing/<name>` or `...:client/<id>`.
    pub fn target(&self, target: &Target) -> String {
        ids::target_arn(&self.region, &self.account, target)
    }

    /// `arn:aws:iot:<region>:<account>:thinggroup/<name>`.
    pub fn thing_group(&self, name: &str) -> String {
        format!(
            "arn:aws:iot:{}:{}:thinggroup/{name}",
            self.region, self.account
        )
    }
}

impl Default for Arns {
    /// Region `local`, account `000000000000`.
    fn default() -> Self {
        Self::new(Self::DEFAULT_REGION, Self::DEFAULT_ACCOUNT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_default_and_custom() {
        let d = Arns::default();
        assert_eq!(
            (d.region.as_str(), d.account.as_str()),
            ("local", "000000000000")
        );
        let id = CommandId::parse("reboot").unwrap();
        assert_eq!(
            d.command(&id),
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(
            d.target(&Target::thing("lab-1").unwrap()),
            "arn:aws:iot:local:000000000000:thing/lab-1"
        );
        let a = Arns::new("eu-west-1", "123456789012");
        assert_eq!(
            a.target(&Target::client("dev.1").unwrap()),
            "arn:aws:iot:eu-west-1:123456789012:client/dev.1"
        );
        assert_eq!(
            a.command(&id),
            "arn:aws:iot:eu-west-1:123456789012:command/reboot"
        );
    }
}
