//! gRPC reflection over a real socket: a server assembled by `GrpcServer` answers both the
//! v1 and the older v1alpha protocol (grpcurl uses v1; Python's grpcio-reflection and older
//! tools only v1alpha), listing the same services and serving the same descriptors.

use std::time::Duration;

use fleetcmd_service_kit::grpc::{GrpcServer, bind};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

/// A server as `GrpcServer` assembles it (health and reflection, no fleetcmd service added:
/// reflection lists the fleetcmd descriptors all the same), a channel to it, and the sender
/// that stops it.
async fn server() -> (
    Channel,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), fleetcmd_service_kit::grpc::ServeError>>,
) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(GrpcServer::new().unwrap().serve(listener, stopped));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    (channel, stop, server)
}

/// One v1alpha reflection request and its answer (`Err`: the stream ended with that status).
async fn v1alpha_call(
    channel: &Channel,
    request: v1alpha::server_reflection_request::MessageRequest,
) -> Result<v1alpha::server_reflection_response::MessageResponse, tonic::Status> {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("the v1alpha reflection service answers")
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("an answer within 5 s")?
        .expect("one answer");
    Ok(answer.message_response.expect("a response member"))
}

#[tokio::test]
async fn a_v1alpha_client_lists_services_and_reads_descriptors() {
    let (channel, stop, server) = server().await;

    // List services, the v1alpha way.
    use v1alpha::server_reflection_request::MessageRequest as Req;
    use v1alpha::server_reflection_response::MessageResponse as Resp;
    let Ok(Resp::ListServicesResponse(list)) =
        v1alpha_call(&channel, Req::ListServices(String::new())).await
    else {
        panic!("expected a list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "fleetcmd.v1.CommandDispatcher",
        "fleetcmd.v1.CommandRegistry",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // The descriptors behind a listed service resolve too.
    let Ok(Resp::FileDescriptorResponse(files)) = v1alpha_call(
        &channel,
        Req::FileContainingSymbol("fleetcmd.v1.CommandRegistry".into()),
    )
    .await
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // An unknown symbol is NOT_FOUND.
    let e = v1alpha_call(
        &channel,
        Req::FileContainingSymbol("no.such.Service".into()),
    )
    .await
    .expect_err("an unknown symbol is refused");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");

    // v1 lists the same services.
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a v1 list of services");
    };
    // Each version lists itself as the reflection service, and otherwise the same services.
    let mut v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    v1_names.sort();
    let without_reflection = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| !n.starts_with("grpc.reflection."))
            .cloned()
            .collect()
    };
    assert!(v1_names.contains(&"grpc.reflection.v1.ServerReflection".to_string()));
    assert_eq!(without_reflection(&v1_names), without_reflection(&names));

    drop(channel);
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
