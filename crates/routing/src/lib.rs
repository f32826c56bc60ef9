//! switchboard-routing: the domain model and the lock-free routing table.
//!
//! Pure code: no I/O, no clock (`now` is a parameter), no async runtime. Given the called number,
//! the caller number, the Call-ID and the time, [`RoutingSnapshot::route`] decides what happens
//! to a call; [`RoutingTable`] lets the admin API replace the table while calls are routed.
//!
//! # Layout (read top to bottom)
//! * [`model`] — the serde records of the public API (deployments, connections, app versions,
//!   splits, cohorts). The contract with the admin API and the store.
//! * [`number`] — phone numbers to E.164 and a compact `u64` key, once at write time.
//! * [`schedule`] — `inbound_config` compiled to zone + minute window + weekday mask.
//! * [`split`] — traffic splits compiled to cumulative basis points; the Call-ID hash.
//! * `snapshot` — [`RoutingSnapshot`]: `build` from all records, `apply` changes, `route`.
//! * `decision` — [`RouteDecision`], [`Route`], [`Reject`] and [`RejectReason`] (→ SIP status).
//! * `entry` — the compiled deployment and app entries that snapshots share and routes point
//!   into; `snapshot` builds them, `decision` reads them, and neither imports the other back.
//! * `cohort` — compact cohort rows (integer caller keys, one arena per shard, interned
//!   variable names), decoded into a `CohortMember` only when a route asks.
//! * `table` — [`RoutingTable`]: one `ArcSwap<RoutingSnapshot>`.
//! * `persist`, `sources` — the structurally shared containers and the source-address filter.
//!
//! # A lookup
//! Normalise the called number (a fast path for `+` and digits; no allocation) → one linear
//! probe in an open-addressing table of 16-byte slots (key, deployment slot, connection) at
//! 3/4 load, one of 4096 shards (more beyond ~1M numbers, ~256 numbers a shard) picked by key,
//! stored inline in its `Arc` → the deployment's compiled entry (outbound-only? paused? schedule open?) → the app
//! entry embedded in it (split, versions, runtime status) → one probe in the deployment's
//! cohort table by caller. The accepted [`Route`] holds one `Arc` to the deployment entry (two
//! with a cohort row) and indexes into it: no strings are copied, and reference counting (the
//! dominant cost of a cached lookup) is kept to the minimum.
//!
//! A lookup touches about eight cache lines in different places, so its cost depends on what
//! is cached: ~60–70 ns for numbers in recent use, several hundred ns when every lookup goes to
//! a different number of a 1M-number table (main-memory latency; see `benches/routing.rs`).
//!
//! # Hot swap
//! A snapshot is immutable. [`RoutingSnapshot::apply`] clones the previous one (a few thousand
//! reference counts) and copies only what a change touches: the number shards holding the
//! deployment's numbers, the 64-slot chunk holding the deployment, the app entry (and the
//! entries of the deployments embedding it), the cohort shards. [`RoutingTable::apply`]
//! serialises writers with a mutex and swaps the result in; readers never lock and never see
//! half an update, so pausing a deployment before PATCHing it (as the seed pages advise) is
//! unnecessary here. Replaced snapshots are freed by the writer, never by a reader finishing a
//! lookup. The property test in `tests/routing.rs` checks that any sequence of changes applied
//! this way routes exactly like a snapshot built from scratch from the final records.
//!
//! # Versions and splits: the one rule
//! **If the deployment's app (same scope, same `app_id`) has a traffic split, the split picks
//! the version and the deployment's `app_version` is not used; otherwise `app_version` is the
//! version.** The pick is `xxh3(Call-ID, fixed seed) % 10_000` against cumulative basis points,
//! identical in every process. A split branch whose runtime is not `ready` (or not registered)
//! takes no calls: a call drawn to it is redrawn, deterministically from the same hash, among
//! the ready branches in proportion to their shares, and the [`SplitChoice`] says so. Only when
//! no branch is ready is the call rejected, for the branch it was drawn to
//! ([`RejectReason::RuntimeNotReady`] → 503 with `Retry-After`, or
//! [`RejectReason::RuntimeMissing`] → 503). A canary that is still provisioning therefore
//! never costs callers a failed call.
//!
//! # Cohorts
//! Per deployment, keyed by the caller's normalised number; for one number the latest row wins
//! (input order, then later uploads). A caller in no cohort is routed without variables.
//! Removing a deployment removes its cohort.
//!
//! # Uniqueness
//! A phone number belongs to at most one deployment (the store enforces the same): `build` and
//! `apply` fail with [`RoutingError::DuplicateNumber`] otherwise, naming both deployments.

pub mod model;
pub mod number;
pub mod schedule;
pub mod split;

mod cohort;
mod decision;
mod entry;
mod error;
mod persist;
mod snapshot;
mod sources;
mod table;

pub use decision::{
    Reject, RejectReason, Route, RouteDecision, SplitChoice, RUNTIME_PROVISIONING_RETRY_AFTER_SECS,
};
pub use error::RoutingError;
pub use number::{normalize_number, normalize_with, CountryCode, NumberError, E164};
pub use schedule::Schedule;
pub use snapshot::{Change, RoutingData, RoutingSettings, RoutingSnapshot};
pub use table::RoutingTable;
