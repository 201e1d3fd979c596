//! The `tollgate.v1` protocol between the hub, its spokes and the admin CLI.
//!
//! Generated from `proto/tollgate/v1/tollgate.proto`; conversions to the domain types live in
//! `tollgate-common`, so that protobuf types never reach the planner.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// Generated messages and services of the `tollgate.v1` package.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}
