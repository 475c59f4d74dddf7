//! Code generated from `proto/kms/v1/*.proto` by build.rs.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod kms {
    pub mod v1 {
        tonic::include_proto!("kms.v1");
    }
}

/// The encoded descriptor set of the kms.v1 protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_descriptor");
