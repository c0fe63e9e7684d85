//! `fleetcmd-cql-test-server`: a small CQL v4 server, the former stand-in for ScyllaDB in the
//! tests of fleetcmd's CQL (ScyllaDB) adapter. The tests and local clusters now run against
//! Apache Cassandra (`deploy/engines/cql.sh`); this server is kept for compatibility and
//! comparison only (`FLEETCMD_CQL_ENGINE=kassandra`, with which `deploy/cluster.sh` and
//! `deploy/test.sh` set `scylla.dialect = "limited"`).
//!
//! It is a **test tool, not a database**. It accepts TCP connections, decodes CQL v4 frames,
//! hands every request to one shared, in-memory [`KassandraSession`] (the `kassandra` crate),
//! and writes the responses back. Everything lives in memory and is lost when the process
//! stops. kassandra understands enough CQL for the `scylla` driver to connect, create keyspaces
//! and tables, prepare statements, read and write by key, delete, batch and page, but it
//! ignores `ORDER BY`, clustering order, range conditions on clustering columns, `USING
//! TIMESTAMP`/`USING TTL` and lightweight transactions (see `docs/engines.md`). Adapters
//! that run against it must use a statement dialect without those clauses, and their
//! conformance suites skip the checks that depend on them.
//!
//! Other limits worth knowing:
//! - One session serves every connection, so a `USE <keyspace>` from one client changes the
//!   default keyspace of all of them: clients should qualify table names.
//! - Requests are processed one at a time under a lock (kassandra's session is synchronous);
//!   responses on a connection are written in request order.
//! - No authentication, compression, TLS or events (`REGISTER` is acknowledged, nothing is
//!   ever pushed).
//!
//! ```text
//! fleetcmd-cql-test-server --listen 127.0.0.1:9042
//! ```

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use kassandra::KassandraSession;
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::Response;
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::result::QueryResult;
use kassandra::frame::{request_stream, response_sink};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "In-memory CQL v4 test server (kassandra); not a database"
)]
struct Args {
    /// Address to accept CQL connections on.
    #[arg(long, env = "FLEETCMD_CQL_LISTEN", default_value = "127.0.0.1:9042")]
    listen: SocketAddr,
}

/// The one session every connection shares. kassandra's session is synchronous and needs
/// `&mut`, so requests are serialized by this lock; each one takes microseconds.
type Shared = Arc<Mutex<KassandraSession>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text when logging to a file (the engine script does).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "CQL test server ready (in memory; not a database)");
    let session: Shared = Arc::new(Mutex::new(KassandraSession::new()));
    tokio::select! {
        r = serve(listener, session) => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down; all data is dropped");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(listener: TcpListener, session: Shared) -> anyhow::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        // Without it every request/response pair waits on Nagle and delayed ACKs (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(%peer, error = %e, "setting TCP_NODELAY failed");
        }
        tracing::debug!(%peer, "client connected");
        let session = session.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, session).await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
}

/// Serves one connection: one response per request frame, on the request's stream id.
async fn connection(mut stream: TcpStream, session: Shared) -> anyhow::Result<()> {
    let (mut read, mut write) = stream.split();
    let mut requests = request_stream(&mut read);
    let mut responses = response_sink(&mut write);
    while let Some(frame) = requests.next().await {
        // A frame that cannot be framed (bad flags, compression) leaves the byte stream in an
        // unknown state: close the connection.
        let (params, opcode, body) = frame.map_err(|e| anyhow::anyhow!("bad frame: {e}"))?;
        let response = if params.version.is_unsupported() {
            // The message drivers expect before they retry with an older protocol version.
            Response::unsupported_version()
        } else {
            match Request::deserialize(opcode, &body, params.flags) {
                Ok(request) => handle(&session, request),
                Err(e) => Response::Error(e),
            }
        };
        responses
            .send((response, params.stream))
            .await
            .map_err(|e| anyhow::anyhow!("writing a response: {e}"))?;
    }
    Ok(())
}

fn handle(session: &Shared, request: Request<'_>) -> Response {
    match request {
        Request::StartUp(_) => Response::Ready,
        Request::Options => Response::options(),
        // No events are ever sent; acknowledging keeps drivers happy.
        Request::Register { .. } => Response::Ready,
        Request::AuthResponse => Response::Error(CqlError::new(
            DbError::ProtocolError,
            "authentication is not supported by the CQL test server",
        )),
        Request::Query(query) => with_session(session, |s| s.process(query)),
        Request::Prepare(query) => with_session(session, |s| s.prepare(query)),
        Request::Execute(execute) => with_session(session, |s| s.execute(execute)),
        Request::Batch(batch) => with_session(session, |s| s.process_batch(batch)),
    }
}

/// Runs `f` on the shared session. kassandra panics on some statements it does not support
/// (`todo!`/`unimplemented!` paths); that becomes an error response instead of a dead
/// connection, and the lock is recovered (the in-memory state may be partly updated, which a
/// test server can live with).
fn with_session<F>(session: &Shared, f: F) -> Response
where
    F: FnOnce(&mut KassandraSession) -> Result<QueryResult, CqlError>,
{
    let mut guard = session.lock().unwrap_or_else(PoisonError::into_inner);
    match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut guard))) {
        Ok(Ok(result)) => Response::Result(result),
        Ok(Err(e)) => Response::Error(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::warn!(%what, "kassandra panicked on a request");
            Response::Error(CqlError::new(
                DbError::ServerError,
                format!("the CQL test server cannot run this statement: {what}"),
            ))
        }
    }
}
