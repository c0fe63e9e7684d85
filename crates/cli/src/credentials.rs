//! `fleetcmd thing cert create|list|revoke` and `fleetcmd thing password create`: device
//! credentials. `cert create` writes the three files an AWS IoT device sample expects
//! (`NAME.cert.pem`, `NAME.private.key`, `root-ca.pem`); the private key and a password are
//! shown once, by the server, and never stored there.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ArgGroup;
use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};

use super::render::{self, Table, time_cell};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertCmd {
    /// Issue a key and a certificate signed by the fleetcmd CA, and write them to files.
    Create(CertCreateArgs),
    /// List an owner's certificates (revoked ones too).
    List(OwnerArgs),
    /// Revoke a certificate: its device is refused from then on.
    Revoke(RevokeArgs),
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PasswordCmd {
    /// Set a new password (replacing any earlier one) and print it, once.
    Create(OwnerArgs),
}

/// Whose credential: a thing by name, or a bare MQTT client by id.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(group(ArgGroup::new("owner").required(true).args(["thing_name", "client_id"])))]
pub struct OwnerArgs {
    /// The thing name.
    #[arg(value_name = "NAME")]
    pub thing_name: Option<String>,
    /// A bare MQTT client id instead of a thing.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CertCreateArgs {
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// Where to write NAME.cert.pem, NAME.private.key (mode 0600) and root-ca.pem.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Validity in days (server default 365, at most 3650).
    #[arg(long, value_name = "DAYS")]
    pub validity_days: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RevokeArgs {
    /// The certificate id (64 hex characters, as `cert list` shows it).
    #[arg(value_name = "CERTIFICATE_ID")]
    pub certificate_id: String,
}

impl OwnerArgs {
    pub fn to_pb(&self) -> pb::CredentialOwner {
        use pb::credential_owner::Owner;
        let owner = match (&self.thing_name, &self.client_id) {
            (Some(name), _) => Owner::ThingName(name.clone()),
            (None, Some(id)) => Owner::ClientId(id.clone()),
            // clap requires one of them.
            (None, None) => Owner::ThingName(String::new()),
        };
        pb::CredentialOwner { owner: Some(owner) }
    }

    /// The thing name or client id: the base of the file names.
    fn name(&self) -> &str {
        self.thing_name
            .as_deref()
            .or(self.client_id.as_deref())
            .unwrap_or_default()
    }
}

/// The files `cert create` writes, in `dir`, for `name`.
pub struct CertFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub root_ca: PathBuf,
}

impl CertFiles {
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        // Thing names and client ids never hold `/`; a name that is not one plain file name
        // (`.`, `..`) is left for the server to refuse, but never written.
        if name.is_empty() || name == "." || name == ".." {
            anyhow::bail!("{name:?} is not a usable thing name or client id");
        }
        Ok(Self {
            certificate: dir.join(format!("{name}.cert.pem")),
            private_key: dir.join(format!("{name}.private.key")),
            root_ca: dir.join("root-ca.pem"),
        })
    }

    /// Refuses to go on when a key or certificate file is there already (a key is never
    /// overwritten); `root-ca.pem` is shared by every device of the directory.
    fn check_free(&self) -> anyhow::Result<()> {
        for path in [&self.certificate, &self.private_key] {
            if path.exists() {
                anyhow::bail!(
                    "{} exists already: remove it or choose another --out",
                    path.display()
                );
            }
        }
        Ok(())
    }

    fn write(&self, r: &pb::CreateThingCertificateResponse) -> anyhow::Result<()> {
        write_private(&self.private_key, r.private_key_pem.as_bytes())?;
        std::fs::write(&self.certificate, &r.certificate_pem)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.certificate.display()))?;
        std::fs::write(&self.root_ca, &r.root_ca_pem)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", self.root_ca.display()))?;
        Ok(())
    }
}

/// Creates `path` readable by its owner only (never replacing a file).
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

super::unary_verbs! {
    pub create_certificate: things.create_thing_certificate(pb::CreateThingCertificateRequest) -> pb::CreateThingCertificateResponse;
    pub list_certificates: things.list_thing_certificates(pb::ListThingCertificatesRequest) -> pb::ListThingCertificatesResponse;
    pub revoke_certificate: things.revoke_thing_certificate(pb::RevokeThingCertificateRequest) -> pb::RevokeThingCertificateResponse;
    pub create_password: things.create_thing_password(pb::CreateThingPasswordRequest) -> pb::CreateThingPasswordResponse;
}

fn status_name(status: i32) -> &'static str {
    match pb::CertificateStatus::try_from(status) {
        Ok(pb::CertificateStatus::Active) => "ACTIVE",
        Ok(pb::CertificateStatus::Revoked) => "REVOKED",
        _ => "UNKNOWN",
    }
}

pub fn certificate_json(c: &pb::Certificate) -> Json {
    json!({
        "certificate_id": c.certificate_id,
        "status": status_name(c.status),
        "ca_certificate_id": c.ca_certificate_id,
        "not_before": render::timestamp_json(c.not_before.as_ref()),
        "not_after": render::timestamp_json(c.not_after.as_ref()),
        "created_at": render::timestamp_json(c.created_at.as_ref()),
        "revoked_at": render::timestamp_json(c.revoked_at.as_ref()),
        "certificate_pem": c.certificate_pem,
    })
}

fn certificate_table(certificates: &[pb::Certificate]) -> Table {
    let columns = ["CERTIFICATE ID", "STATUS", "CREATED", "NOT AFTER"];
    Table::new(columns).with_rows(certificates, |c| {
        vec![
            c.certificate_id.clone(),
            status_name(c.status).to_owned(),
            time_cell(c.created_at.as_ref()),
            time_cell(c.not_after.as_ref()),
        ]
    })
}

/// Runs a `thing cert` verb and answers in both forms, for the caller to print.
pub async fn run_cert(api: &super::Api, cmd: CertCmd) -> anyhow::Result<(Json, String)> {
    Ok(match cmd {
        CertCmd::Create(args) => {
            let files = CertFiles::new(&args.out, args.owner.name())?;
            files.check_free()?;
            std::fs::create_dir_all(&args.out)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", args.out.display()))?;
            let request = pb::CreateThingCertificateRequest {
                owner: Some(args.owner.to_pb()),
                validity_days: args.validity_days.unwrap_or(0),
            };
            let r = create_certificate(api, request).await?;
            files.write(&r)?;
            let paths = [&files.certificate, &files.private_key, &files.root_ca];
            let text = format!(
                "issued certificate {}\nwrote {}\n",
                r.certificate_id,
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let json = json!({
                "certificate_id": r.certificate_id,
                "certificate_file": files.certificate,
                "private_key_file": files.private_key,
                "root_ca_file": files.root_ca,
            });
            (json, text)
        }
        CertCmd::List(owner) => {
            let request = pb::ListThingCertificatesRequest {
                owner: Some(owner.to_pb()),
            };
            let r = list_certificates(api, request).await?;
            let json = json!({
                "certificates": r.certificates.iter().map(certificate_json).collect::<Vec<_>>(),
            });
            (json, certificate_table(&r.certificates).render())
        }
        CertCmd::Revoke(args) => {
            let request = pb::RevokeThingCertificateRequest {
                certificate_id: args.certificate_id.clone(),
            };
            let r = revoke_certificate(api, request).await?;
            let text = format!("revoked {}\n", r.certificate_id);
            let json = json!({
                "certificate_id": r.certificate_id,
                "status": status_name(r.status),
            });
            (json, text)
        }
    })
}

/// Runs a `thing password` verb and answers in both forms, for the caller to print.
pub async fn run_password(api: &super::Api, cmd: PasswordCmd) -> anyhow::Result<(Json, String)> {
    let PasswordCmd::Create(owner) = cmd;
    let request = pb::CreateThingPasswordRequest {
        owner: Some(owner.to_pb()),
    };
    let r = create_password(api, request).await?;
    let text = format!(
        "username: {}\npassword: {}\n(shown once: the server keeps only its hash)\n",
        r.username, r.password
    );
    let json = json!({"username": r.username, "password": r.password});
    Ok((json, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use clap::error::ErrorKind;
    use pb::credential_owner::Owner;

    #[derive(Debug, Parser)]
    enum Cli {
        #[command(subcommand)]
        Cert(CertCmd),
        #[command(subcommand)]
        Password(PasswordCmd),
    }

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("thing").chain(line.split(' ')))
    }

    #[test]
    fn cert_create_takes_a_thing_or_a_client_and_a_directory() {
        let Cli::Cert(CertCmd::Create(args)) =
            parse("cert create lamp-1 --out /tmp/d --validity-days 30").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            args.owner.to_pb().owner,
            Some(Owner::ThingName("lamp-1".into()))
        );
        assert_eq!(
            (args.out.as_path(), args.validity_days),
            (Path::new("/tmp/d"), Some(30))
        );
        let Cli::Cert(CertCmd::Create(args)) = parse("cert create --client-id s-7").unwrap() else {
            panic!()
        };
        assert_eq!(
            args.owner.to_pb().owner,
            Some(Owner::ClientId("s-7".into()))
        );
        assert_eq!(args.out, PathBuf::from("."));
        assert_eq!(
            parse("cert create").unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse("cert create lamp-1 --client-id s-7")
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn cert_list_revoke_and_password_parse() {
        let Cli::Cert(CertCmd::List(owner)) = parse("cert list lamp-1").unwrap() else {
            panic!()
        };
        assert_eq!(owner.thing_name.as_deref(), Some("lamp-1"));
        let Cli::Cert(CertCmd::Revoke(args)) = parse("cert revoke abc").unwrap() else {
            panic!()
        };
        assert_eq!(args.certificate_id, "abc");
        assert_eq!(
            parse("cert revoke").unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        let Cli::Password(PasswordCmd::Create(owner)) =
            parse("password create --client-id s-7").unwrap()
        else {
            panic!()
        };
        assert_eq!(owner.client_id.as_deref(), Some("s-7"));
    }

    #[test]
    fn the_files_are_named_as_device_samples_expect_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles::new(dir.path(), "lamp-1").unwrap();
        assert_eq!(files.certificate, dir.path().join("lamp-1.cert.pem"));
        assert_eq!(files.private_key, dir.path().join("lamp-1.private.key"));
        assert_eq!(files.root_ca, dir.path().join("root-ca.pem"));
        files.check_free().unwrap();
        let r = pb::CreateThingCertificateResponse {
            certificate_id: "id".into(),
            certificate_pem: "cert".into(),
            private_key_pem: "key".into(),
            root_ca_pem: "ca".into(),
        };
        files.write(&r).unwrap();
        assert_eq!(std::fs::read_to_string(&files.private_key).unwrap(), "key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.private_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(files.check_free().is_err());
        assert!(files.write(&r).is_err(), "a key is never overwritten");
        assert!(CertFiles::new(dir.path(), "..").is_err());
    }
}
