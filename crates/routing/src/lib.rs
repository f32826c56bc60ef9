//! switchboard-routing: the domain model and the lock-free routing table.

pub mod model;
