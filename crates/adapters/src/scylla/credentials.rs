//! Device credentials: each owner's whole in `credentials`, each certificate in `certificates`
//! (found by id) and each revoked one again in the single `revoked_certificates` partition
//! (the CRL's source). Every row is written `USING TIMESTAMP` of the owner's version: an
//! owner's credentials are never deleted, so versions only grow, a replayed (older) write
//! loses to what is stored, and a certificate row once revoked stays revoked. A crash
//! between the rows of one write leaves them behind the `credentials` row at worst, and the
//! replay writes them all again.
//!
//! Registered CA certificates are rows of the single `ca_certificates` partition (at most
//! [`REGISTERED_CAS_MAX`] of them), written `USING TIMESTAMP` of their version.

use fleetcmd_domain::ca::{CaCertificate, REGISTERED_CAS_MAX};
use fleetcmd_domain::credential::{CertificateRecord, CertificateStatus, Credentials};
use fleetcmd_domain::ports::{CredentialWrite, PortResult};
use fleetcmd_domain::{Target, ports::PortError};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::ScyllaReadModel;
use super::error::{decode_json, encode_json, exec_error, rows_error, to_i64};
use super::statements::prepare;
use super::tables::ALL_SCOPE;
use super::writes::ts_last;

/// Rows read per round trip of the revoked listing.
const REVOKED_PAGE_ROWS: usize = 1000;

/// DDL of the credential tables.
pub(super) fn credential_tables(ks: &str) -> [String; 4] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.credentials (owner text, data blob, \
             PRIMARY KEY (owner))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.certificates (certificate_id text, owner text, \
             data blob, PRIMARY KEY (certificate_id))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.revoked_certificates (scope text, \
             certificate_id text, data blob, PRIMARY KEY ((scope), certificate_id)) \
             WITH CLUSTERING ORDER BY (certificate_id ASC)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.ca_certificates (scope text, \
             ca_certificate_id text, data blob, PRIMARY KEY ((scope), ca_certificate_id)) \
             WITH CLUSTERING ORDER BY (ca_certificate_id ASC)"
        ),
    ]
}

pub(super) struct CredentialStatements {
    get_credentials: PreparedStatement,
    put_credentials: PreparedStatement,
    get_certificate: PreparedStatement,
    put_certificate: PreparedStatement,
    revoked: PreparedStatement,
    put_revoked: PreparedStatement,
    cas: PreparedStatement,
    put_ca: PreparedStatement,
}

/// The CQL of each statement, in the order of [`CredentialStatements`], and how many values
/// each binds (`VALUES (...) USING TIMESTAMP ?` takes the timestamp last).
fn statement_texts(ks: &str) -> [(String, usize); 8] {
    [
        (
            format!("SELECT data FROM {ks}.credentials WHERE owner = ?"),
            1,
        ),
        (
            format!("INSERT INTO {ks}.credentials (owner, data) VALUES (?, ?) USING TIMESTAMP ?"),
            3,
        ),
        (
            format!("SELECT data FROM {ks}.certificates WHERE certificate_id = ?"),
            1,
        ),
        (
            format!(
                "INSERT INTO {ks}.certificates (certificate_id, owner, data) VALUES (?, ?, ?) \
                 USING TIMESTAMP ?"
            ),
            4,
        ),
        (
            format!("SELECT data FROM {ks}.revoked_certificates WHERE scope = ?"),
            1,
        ),
        (
            format!(
                "INSERT INTO {ks}.revoked_certificates (scope, certificate_id, data) \
                 VALUES (?, ?, ?) USING TIMESTAMP ?"
            ),
            4,
        ),
        (
            format!("SELECT data FROM {ks}.ca_certificates WHERE scope = ?"),
            1,
        ),
        (
            format!(
                "INSERT INTO {ks}.ca_certificates (scope, ca_certificate_id, data) \
                 VALUES (?, ?, ?) USING TIMESTAMP ?"
            ),
            4,
        ),
    ]
}

impl CredentialStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> PortResult<Self> {
        let [a, b, c, d, e, f, g, h] = statement_texts(ks);
        Ok(Self {
            get_credentials: prepare(session, a.0).await?,
            put_credentials: prepare(session, b.0).await?,
            get_certificate: prepare(session, c.0).await?,
            put_certificate: prepare(session, d.0).await?,
            revoked: prepare(session, e.0).await?,
            put_revoked: prepare(session, f.0).await?,
            cas: prepare(session, g.0).await?,
            put_ca: prepare(session, h.0).await?,
        })
    }
}

impl ScyllaReadModel {
    /// Writes each owner's credentials whole (the batch's last write per owner is its state
    /// after the batch, and the timestamps make any order of writes give the same end).
    pub(super) async fn commit_credentials(&self, writes: &[CredentialWrite]) -> PortResult<()> {
        let cs = &self.cred;
        let mut futures = Vec::new();
        for w in writes {
            let c = &w.credentials;
            let owner = c.owner.resource_name();
            let ts = to_i64(c.version, "credentials version")?;
            let data = encode_json("credentials", &owner, c)?;
            futures.push(self.exec(
                "writing credentials",
                &cs.put_credentials,
                ts_last(
                    vec![CqlValue::Text(owner.clone()), CqlValue::Blob(data)],
                    ts,
                ),
            ));
            for r in c.certificates.values() {
                let data = encode_json("certificate", &r.certificate_id, r)?;
                futures.push(self.exec(
                    "writing a certificate",
                    &cs.put_certificate,
                    ts_last(
                        vec![
                            CqlValue::Text(r.certificate_id.clone()),
                            CqlValue::Text(owner.clone()),
                            CqlValue::Blob(data.clone()),
                        ],
                        ts,
                    ),
                ));
                if r.status == CertificateStatus::Revoked {
                    futures.push(self.exec(
                        "writing a revoked certificate",
                        &cs.put_revoked,
                        ts_last(
                            vec![
                                CqlValue::Text(ALL_SCOPE.to_owned()),
                                CqlValue::Text(r.certificate_id.clone()),
                                CqlValue::Blob(data),
                            ],
                            ts,
                        ),
                    ));
                }
            }
        }
        self.run_writes(futures).await
    }

    /// Writes each registered CA certificate whole.
    pub(super) async fn commit_cas(&self, cas: &[CaCertificate]) -> PortResult<()> {
        let mut futures = Vec::with_capacity(cas.len());
        for c in cas {
            let id = &c.ca_certificate_id;
            let data = encode_json("CA certificate", id, c)?;
            futures.push(self.exec(
                "writing a CA certificate",
                &self.cred.put_ca,
                ts_last(
                    vec![
                        CqlValue::Text(ALL_SCOPE.to_owned()),
                        CqlValue::Text(id.clone()),
                        CqlValue::Blob(data),
                    ],
                    to_i64(c.version, "CA certificate version")?,
                ),
            ));
        }
        self.run_writes(futures).await
    }

    /// Every registered CA certificate, by id.
    pub(super) async fn stored_cas(&self) -> PortResult<Vec<CaCertificate>> {
        self.scope_rows("CA certificates", &self.cred.cas, REGISTERED_CAS_MAX)
            .await
    }

    /// Every row of the single `ALL_SCOPE` partition that `st` reads, decoded, in pages of
    /// `page_rows`.
    async fn scope_rows<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        st: &PreparedStatement,
        page_rows: usize,
    ) -> PortResult<Vec<T>> {
        let mut out = Vec::new();
        let mut state = None;
        loop {
            let fetched = self
                .fetch(
                    what,
                    st,
                    vec![CqlValue::Text(ALL_SCOPE.to_owned())],
                    page_rows,
                    state,
                )
                .await?;
            for data in fetched.rows {
                out.push(decode_json(what, &data)?);
            }
            match fetched.more {
                Some(s) => state = Some(s),
                None => return Ok(out),
            }
        }
    }

    async fn one_row<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        st: &PreparedStatement,
        key: String,
    ) -> PortResult<Option<T>> {
        let res = self
            .session
            .execute_unpaged(st, vec![CqlValue::Text(key.clone())])
            .await
            .map_err(|e| exec_error(what, e))?;
        let rows = res.into_rows_result().map_err(|e| rows_error(what, e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error(what, e))?
        {
            Some((data,)) => decode_json(&format!("{what} {key}"), &data).map(Some),
            None => Ok(None),
        }
    }

    pub(super) async fn stored_credentials(
        &self,
        owner: &Target,
    ) -> PortResult<Option<Credentials>> {
        let st = &self.cred.get_credentials;
        self.one_row("credentials", st, owner.resource_name()).await
    }

    pub(super) async fn stored_certificate(
        &self,
        certificate_id: &str,
    ) -> PortResult<Option<CertificateRecord>> {
        let st = &self.cred.get_certificate;
        self.one_row("certificate", st, certificate_id.to_owned())
            .await
    }

    pub(super) async fn stored_revoked(&self) -> PortResult<Vec<CertificateRecord>> {
        let revoked: Vec<CertificateRecord> = self
            .scope_rows(
                "revoked certificates",
                &self.cred.revoked,
                REVOKED_PAGE_ROWS,
            )
            .await?;
        if let Some(r) = revoked
            .iter()
            .find(|r| r.status != CertificateStatus::Revoked)
        {
            return Err(PortError::Corrupt(format!(
                "certificate {} is listed as revoked but is {}",
                r.certificate_id,
                r.status.as_str()
            )));
        }
        Ok(revoked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_markers_match_the_values_each_statement_gets() {
        for (cql, want) in statement_texts("ks") {
            assert_eq!(cql.matches('?').count(), want, "{cql}");
        }
        for ddl in credential_tables("ks") {
            assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS ks."), "{ddl}");
        }
    }
}
