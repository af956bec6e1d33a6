//! The reflection option: a real reflection client lists the served services and gets the
//! descriptors of one.

use chassis_core::health::HealthRegistry;
use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcReflection, GrpcRouter};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tower::Layer as _;

use super::support::serve;

async fn ask(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.unwrap().unwrap();
    answer.message_response.unwrap()
}

#[tokio::test]
async fn reflection_lists_services_and_describes_them() {
    let routes = GrpcRouter::new()
        .add_service(GrpcHealth::new(HealthRegistry::new()).into_service())
        .add_service(GrpcReflection::new().into_service().unwrap());
    let server = serve(GrpcLayers::new().layer(routes), None).await;
    let mut client = ServerReflectionClient::new(server.channel().await);

    let MessageResponse::ListServicesResponse(list) =
        ask(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"
        ]
    );

    let MessageResponse::FileDescriptorResponse(files) = ask(
        &mut client,
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
    )
    .await
    else {
        panic!("not a descriptor");
    };
    // The encoded FileDescriptorProto of health.proto: its package and method names.
    let file = String::from_utf8_lossy(&files.file_descriptor_proto[0]).into_owned();
    for name in ["grpc.health.v1", "HealthCheckRequest", "Check", "Watch"] {
        assert!(file.contains(name), "{name} missing: {file:?}");
    }
}

#[test]
fn a_descriptor_set_that_does_not_decode_is_a_config_error() {
    let err = GrpcReflection::new()
        .file_descriptor_set(b"\xff\xff not a descriptor set")
        .into_service()
        .err()
        .expect("refused");
    assert!(err.to_string().contains("gRPC reflection"), "{err}");
}
