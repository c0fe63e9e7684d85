//! `fleetcmd thing ca register|list`: CAs of your own PKI whose device certificates fleetcmd
//! accepts (RegisterCaCertificate, ListCaCertificates).

use std::path::PathBuf;

use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};

use super::render::{self, Table, time_cell};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCmd {
    /// Register a CA certificate (PEM file): device certificates it signs may then be
    /// attached with RegisterThingCertificate, and devices presenting them are trusted.
    Register(RegisterArgs),
    /// List the registered CAs (with `--json`, each one's PEM too).
    List,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RegisterArgs {
    /// The CA's certificate, in PEM.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

super::unary_verbs! {
    pub register_ca: things.register_ca_certificate(pb::RegisterCaCertificateRequest) -> pb::RegisterCaCertificateResponse;
    pub list_cas: things.list_ca_certificates(pb::ListCaCertificatesRequest) -> pb::ListCaCertificatesResponse;
}

pub fn ca_json(c: &pb::CaCertificate) -> Json {
    json!({
        "ca_certificate_id": c.ca_certificate_id,
        "common_name": c.common_name,
        "not_before": render::timestamp_json(c.not_before.as_ref()),
        "not_after": render::timestamp_json(c.not_after.as_ref()),
        "registered_at": render::timestamp_json(c.registered_at.as_ref()),
        "certificate_pem": c.certificate_pem,
    })
}

fn ca_table(cas: &[pb::CaCertificate]) -> Table {
    let columns = [
        "CA CERTIFICATE ID",
        "COMMON NAME",
        "REGISTERED",
        "NOT AFTER",
    ];
    Table::new(columns).with_rows(cas, |c| {
        vec![
            c.ca_certificate_id.clone(),
            c.common_name.clone(),
            time_cell(c.registered_at.as_ref()),
            time_cell(c.not_after.as_ref()),
        ]
    })
}

/// Runs a `thing ca` verb and answers in both forms, for the caller to print.
pub async fn run_ca(api: &super::Api, cmd: CaCmd) -> anyhow::Result<(Json, String)> {
    Ok(match cmd {
        CaCmd::Register(args) => {
            let pem = std::fs::read_to_string(&args.file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.file.display()))?;
            let request = pb::RegisterCaCertificateRequest {
                ca_certificate_pem: pem,
            };
            let r = register_ca(api, request).await?;
            let text = format!("registered CA {}\n", r.ca_certificate_id);
            (json!({"ca_certificate_id": r.ca_certificate_id}), text)
        }
        CaCmd::List => {
            let r = list_cas(api, pb::ListCaCertificatesRequest {}).await?;
            let json = json!({
                "ca_certificates": r.ca_certificates.iter().map(ca_json).collect::<Vec<_>>(),
            });
            (json, ca_table(&r.ca_certificates).render())
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    enum Cli {
        #[command(subcommand)]
        Ca(CaCmd),
    }

    #[test]
    fn register_takes_a_file_and_list_nothing() {
        let parse = |line: &str| Cli::try_parse_from(std::iter::once("t").chain(line.split(' ')));
        let Cli::Ca(CaCmd::Register(args)) = parse("ca register acme.pem").unwrap() else {
            panic!()
        };
        assert_eq!(args.file, PathBuf::from("acme.pem"));
        assert!(matches!(parse("ca list").unwrap(), Cli::Ca(CaCmd::List)));
        assert_eq!(
            parse("ca register").unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }
}
