//! The shop's gRPC contract: `inventory.proto` (beside this crate's `Cargo.toml`) and the Rust
//! code generated from it when this crate builds, in pure Rust (protox + tonic's prost build;
//! no `protoc`).
//!
//! - [`inventory::v1`]: the `inventory.v1` messages, the `Inventory` client (over any gRPC
//!   channel; the shop's orders service uses the chassis
//!   [`GrpcClient`](https://docs.rs/chassis-http)) and server trait (served by the inventory
//!   service behind the chassis `GrpcLayers`);
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of the file, for gRPC reflection;
//! - [`methods`]: the full method paths, as clients declare them idempotent and servers scope them.
//!
//! # Example
//! ```
//! use shop_proto::inventory::v1::{GetProductsRequest, inventory_client::InventoryClient};
//!
//! # async fn read<T>(channel: T) -> Result<(), tonic::Status>
//! # where
//! #     T: tonic::client::GrpcService<tonic::body::Body>,
//! #     T::Error: Into<tonic::codegen::StdError>,
//! #     T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
//! #     <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
//! # {
//! let mut inventory = InventoryClient::new(channel);
//! let products = inventory
//!     .get_products(GetProductsRequest { skus: vec!["tea".into()] })
//!     .await?
//!     .into_inner()
//!     .products;
//! # let _ = products; Ok(()) }
//! ```

/// The `inventory` package.
pub mod inventory {
    /// `inventory.v1`, generated from `inventory.proto`.
    #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("inventory.v1");
    }
}

/// The encoded `FileDescriptorSet` of `inventory.proto` (for a reflection service).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inventory_descriptor.bin"));

/// The full paths of the `inventory.v1.Inventory` methods.
pub mod methods {
    /// The service's name, as routers and health checks know it.
    pub const INVENTORY: &str = "inventory.v1.Inventory";
    /// `GetProducts`.
    pub const GET_PRODUCTS: &str = "/inventory.v1.Inventory/GetProducts";
    /// `GetReservation`.
    pub const GET_RESERVATION: &str = "/inventory.v1.Inventory/GetReservation";
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::FileDescriptorSet;
    use tonic::server::NamedService as _;

    use super::inventory::v1::inventory_server::InventoryServer;
    use super::*;

    /// The constants name what the contract declares, and the generated server serves it.
    #[test]
    fn method_paths_follow_the_contract() {
        let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let file = &fds.file[0];
        let service = &file.service[0];
        let name = format!("{}.{}", file.package(), service.name());
        assert_eq!(name, methods::INVENTORY);
        let mut paths: Vec<String> = service
            .method
            .iter()
            .map(|m| format!("/{name}/{}", m.name()))
            .collect();
        paths.sort();
        assert_eq!(paths, [methods::GET_PRODUCTS, methods::GET_RESERVATION]);
        struct Never;
        #[tonic::async_trait]
        impl inventory::v1::inventory_server::Inventory for Never {
            async fn get_products(
                &self,
                _: tonic::Request<inventory::v1::GetProductsRequest>,
            ) -> Result<tonic::Response<inventory::v1::GetProductsResponse>, tonic::Status>
            {
                Err(tonic::Status::unimplemented(""))
            }
            async fn get_reservation(
                &self,
                _: tonic::Request<inventory::v1::GetReservationRequest>,
            ) -> Result<tonic::Response<inventory::v1::Reservation>, tonic::Status> {
                Err(tonic::Status::unimplemented(""))
            }
        }
        let _ = InventoryServer::new(Never);
        assert_eq!(InventoryServer::<Never>::NAME, methods::INVENTORY);
    }
}
