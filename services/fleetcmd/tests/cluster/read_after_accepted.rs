//! s6: in cluster mode too, the edge answers a device's update with `/accepted` only once the
//! update is readable: a Get made as soon as the device has the reply shows it.

use std::time::Duration;

use fleetcmd_contracts::convert::status_to_pb;
use fleetcmd_domain::topics::{RequestFormat, UpdateFormat};
use fleetcmd_domain::{ExecutionId, ExecutionStatus, Target};
use fleetcmd_e2e::device::Device;
use fleetcmd_local_cluster::reads::try_get;
use fleetcmd_local_cluster::starts::try_start;
use fleetcmd_local_cluster::unique_id;
use serde_json::json;
use tonic::Code;

use super::{given_a_cluster, given_the_engines};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_a_get_right_after_accepted_shows_the_update() {
    let test = "s6_a_get_right_after_accepted_shows_the_update";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    let (mut cluster, mut registry, command_id) = given_a_cluster("s6", &engines, 1, 1).await;
    let mut dispatcher = cluster.dispatcher("dispatcher-0");
    let root = cluster.topic_root();
    let name = format!("{}-probe-{}", cluster.root(), unique_id());
    let target = Target::thing(name.clone()).expect("valid thing name");
    let mut device = Device::v5(engines.mqtt_port, &name).await.expect("connect");
    let mut filters: Vec<String> = root.device_request_filters(&target).into();
    filters.push(format!(
        "{}/commands/things/{name}/executions/+/response/+/json",
        root.as_str()
    ));
    device.subscribe(&filters).await.expect("subscribe");

    for round in 0..5 {
        let token = format!("s6-{round}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let id = loop {
            match try_start(&mut dispatcher, &command_id, &target, &token)
                .await
                .0
            {
                Ok(id) => break id,
                Err(s)
                    if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!("[s6] start {token}: {:?} {}", s.code(), s.message()),
            }
        };
        let eid = ExecutionId::parse(id.clone()).expect("execution id");
        let request = root.request(&target, &eid, RequestFormat::Json);
        device
            .expect_topic(&request, WITHIN)
            .await
            .expect("the request");
        let update = request.replace("/request/json", "/response/json");
        let accepted = root.reply(&target, &eid, true, UpdateFormat::Json);

        for (body, status) in [
            (
                json!({"status": "IN_PROGRESS"}),
                ExecutionStatus::InProgress,
            ),
            (json!({"status": "SUCCEEDED"}), ExecutionStatus::Succeeded),
        ] {
            device
                .publish_json(update.clone(), &body)
                .await
                .expect("publish");
            device
                .expect_topic(&accepted, WITHIN)
                .await
                .expect("/accepted");
            let (got, _) = try_get(&mut registry, &id).await;
            let got =
                got.unwrap_or_else(|s| panic!("[s6] Get {id}: {:?} {}", s.code(), s.message()));
            assert_eq!(
                got.status,
                status_to_pb(status),
                "[s6] round {round}: a Get right after /accepted of {status:?} must show it"
            );
        }
    }
    cluster.assert_all_alive();
}
