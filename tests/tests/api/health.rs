//! Health and reflection.

use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, within};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

use crate::Result;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_every_service_serving_and_unknown_ones_not_found() -> Result {
    let server = Server::start("health").await?;
    let mut health = HealthClient::new(channel(&server).await?);

    for service in [
        "",
        "fleetcmd.v1.CommandRegistry",
        "fleetcmd.v1.CommandDispatcher",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "health of {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nothing".into(),
        })
        .await;
    expect_code(unknown, Code::NotFound, &[]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_and_describes_them() -> Result {
    let server = Server::start("reflection").await?;
    let mut reflection = ServerReflectionClient::new(channel(&server).await?);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "fleetcmd.v1.CommandDispatcher".into(),
        )),
    ];

    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut answers: Vec<ServerReflectionResponse> = Vec::new();
    for _ in 0..2 {
        let answer = within("a reflection answer", stream.message()).await??;
        answers.push(answer.ok_or_else(|| anyhow::anyhow!("reflection stream ended"))?);
    }

    let mut answers = answers.into_iter();
    match answers.next().and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
            for expected in [
                "fleetcmd.v1.CommandRegistry",
                "fleetcmd.v1.CommandDispatcher",
                "grpc.health.v1.Health",
            ] {
                assert!(
                    names.contains(&expected),
                    "{expected} missing from {names:?}"
                );
            }
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    match answers.next().and_then(|a| a.message_response) {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            let all: Vec<u8> = files.file_descriptor_proto.concat();
            let text = String::from_utf8_lossy(&all);
            for symbol in [
                "CommandDispatcher",
                "StartCommandExecution",
                "CancelCommandExecution",
            ] {
                assert!(
                    text.contains(symbol),
                    "{symbol} missing from the descriptor"
                );
            }
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }
    drop(stream);
    server.shutdown().await
}
