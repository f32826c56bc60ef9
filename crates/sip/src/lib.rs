//! placeholder
pub mod transaction;
pub mod auth;
