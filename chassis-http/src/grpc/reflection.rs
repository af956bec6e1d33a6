//! [`GrpcReflection`]: the gRPC server reflection service (`grpc.reflection.v1`, feature
//! `grpc-reflection`), so tools such as `grpcurl` or Postman list a server's services and
//! build calls without the `.proto` files.
//!
//! It answers from encoded `FileDescriptorSet`s: the health service's and its own are always
//! there; add the application's (the bytes a build script wrote, e.g. with
//! `tonic_prost_build::Builder::file_descriptor_set_path`, or protox's output). Serve it in
//! the same [`GrpcRouter`](super::GrpcRouter), behind the same [`GrpcLayers`](super::GrpcLayers).
//! Reflection shows every registered method's signature: an option, off unless added, for
//! servers whose API may be shown to whoever reaches the port.
//!
//! # Example
//! ```
//! use chassis_core::health::HealthRegistry;
//! use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcReflection, GrpcRouter};
//! use tower::Layer as _;
//!
//! # fn main() -> Result<(), chassis_http::error::Error> {
//! # const MY_DESCRIPTORS: &[u8] = &[];
//! // The request body type is usually inferred from the server the routes are given to.
//! let routes = GrpcRouter::<tonic::body::Body>::new()
//!     .add_service(GrpcHealth::new(HealthRegistry::new()).into_service())
//!     .add_service(GrpcReflection::new().file_descriptor_set(MY_DESCRIPTORS).into_service()?);
//! let _service = GrpcLayers::new().layer(routes);
//! # Ok(()) }
//! ```

use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};

use crate::error::{Error, ErrorKind};

/// Builds the reflection service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct GrpcReflection {
    sets: Vec<&'static [u8]>,
}

impl Default for GrpcReflection {
    fn default() -> Self {
        Self {
            sets: vec![tonic_health::pb::FILE_DESCRIPTOR_SET],
        }
    }
}

impl GrpcReflection {
    /// Reflection over the health service (`grpc.health.v1`) and itself.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the services of an encoded `FileDescriptorSet`.
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.sets.push(encoded);
        self
    }

    /// The tonic service, for a [`GrpcRouter`](super::GrpcRouter).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when a set does not decode, or names a file it lacks.
    pub fn into_service(self) -> Result<ServerReflectionServer<impl ServerReflection>, Error> {
        self.sets
            .into_iter()
            .fold(
                tonic_reflection::server::Builder::configure(),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
            .build_v1()
            .map_err(|e| {
                Error::new(ErrorKind::InvalidConfig {
                    reason: format!("gRPC reflection: {e}"),
                })
            })
    }
}
