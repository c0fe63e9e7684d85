//! A tower layer for the gRPC servers: counts and times every call by method and status code,
//! and — when trace export is on — runs the call in a server span whose parent is the
//! caller's `traceparent` metadata.
//!
//! The status is read from the response headers: tonic answers a failed call with a
//! trailers-only response (`grpc-status` in the headers), and a successful unary call with
//! its status in the trailers, so a response without `grpc-status` in its headers is `OK`.
//! Streaming calls are timed to their response headers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tracing::Instrument as _;
use tracing::Span;
use tracing::instrument::Instrumented;

use crate::{context, metrics};

/// Wraps a gRPC server's routes (`tonic::transport::Server::builder().layer(GrpcLayer)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcLayer;

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService { inner }
    }
}

/// The layer stack of a `tonic` server built with `Server::builder().layer(GrpcLayer)`.
pub type Stack = tower_layer::Stack<GrpcLayer, tower_layer::Identity>;

/// The service [`GrpcLayer`] makes.
#[derive(Debug, Clone)]
pub struct GrpcService<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for GrpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GrpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The URI's parts are reference-counted: keeping it costs no allocation.
        let uri = req.uri().clone();
        let span = if context::enabled() {
            server_span(&req)
        } else {
            Span::none()
        };
        GrpcFuture {
            inner: self.inner.call(req).instrument(span),
            uri,
            started: Instant::now(),
        }
    }
}

fn server_span<B>(req: &http::Request<B>) -> Span {
    let method = req.uri().path().trim_start_matches('/');
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(tp) = req
        .headers()
        .get(context::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        context::set_parent(&span, tp);
    }
    span
}

pin_project_lite::pin_project! {
    /// The future of a [`GrpcService`] call.
    pub struct GrpcFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        uri: http::Uri,
        started: Instant,
    }
}

impl<F, R, E> Future for GrpcFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = std::task::ready!(this.inner.as_mut().poll(cx));
        let code = match &result {
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
                .unwrap_or(0),
            // The transport failed before an answer: no status reached the caller.
            Err(_) => 2,
        };
        let method = this.uri.path().trim_start_matches('/');
        metrics::grpc_request(
            method,
            code_name(code),
            this.started.elapsed().as_secs_f64(),
        );
        let span = this.inner.span();
        if !span.is_none() {
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "error");
            }
        }
        Poll::Ready(result)
    }
}

/// The canonical name of a gRPC status code.
pub fn code_name(code: u16) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    #[derive(Clone)]
    struct Answer(Option<&'static str>);

    impl tower_service::Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut r = http::Response::new(());
            if let Some(status) = self.0 {
                r.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(status));
            }
            std::future::ready(Ok(r))
        }
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code() {
        let request = |path: &str| {
            http::Request::builder()
                .uri(format!("http://x{path}"))
                .body(())
                .expect("request")
        };
        let mut ok = GrpcLayer.layer(Answer(None));
        let mut denied = GrpcLayer.layer(Answer(Some("7")));
        ok.call(request("/fleetcmd.v1.T/Ok")).await.expect("ok");
        ok.call(request("/fleetcmd.v1.T/Ok")).await.expect("ok");
        denied
            .call(request("/fleetcmd.v1.T/Denied"))
            .await
            .expect("answered");
        let text = metrics::render();
        assert!(
            text.contains(
                "fleetcmd_grpc_requests_total{code=\"OK\",method=\"fleetcmd.v1.T/Ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("fleetcmd_grpc_requests_total{code=\"PERMISSION_DENIED\",method=\"fleetcmd.v1.T/Denied\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "fleetcmd_grpc_request_duration_seconds_count{code=\"OK\",method=\"fleetcmd.v1.T/Ok\"} 2"
        ));
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
