//! The live table: one `ArcSwap<RoutingSnapshot>`, lock-free for readers.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};

use crate::error::RoutingError;
use crate::snapshot::{Change, RoutingSnapshot};

/// Replaced snapshots kept by the writer until no reader holds them. Readers finish a lookup
/// in well under a microsecond, so by the next write almost all are free; the bound only
/// matters if someone holds a `load_full()` for long, and then the oldest is released anyway.
const MAX_RETIRED_SNAPSHOTS: usize = 16;

/// The routing table every call reads. State that must change together (numbers, deployments,
/// versions, splits, cohorts, allowlists) sits behind this one `ArcSwap`, so a reader sees
/// either the whole old table or the whole new one.
#[derive(Debug)]
pub struct RoutingTable {
    current: ArcSwap<RoutingSnapshot>,
    /// Serialises writers (each derives the next snapshot from the current one) and keeps
    /// replaced snapshots so that the writer, not a reader, pays for freeing them.
    writer: Mutex<Retired>,
}

#[derive(Debug, Default)]
struct Retired {
    snapshots: Vec<Arc<RoutingSnapshot>>,
}

impl RoutingTable {
    pub fn new(snapshot: RoutingSnapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Retired::default()),
        }
    }

    /// The current snapshot, for one lookup: no lock, no allocation, no reference-count
    /// contention. Do not hold the guard across an `.await`; use [`RoutingTable::snapshot`] for
    /// anything long-lived.
    #[inline]
    pub fn load(&self) -> Guard<Arc<RoutingSnapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (one reference-count increment).
    pub fn snapshot(&self) -> Arc<RoutingSnapshot> {
        self.current.load_full()
    }

    /// Replaces the table wholesale (startup, settings change, resync after a missed notice).
    pub fn store(&self, snapshot: Arc<RoutingSnapshot>) {
        let mut retired = self.lock_writer();
        let previous = self.current.swap(snapshot);
        retired.retire(previous);
    }

    /// Applies committed changes: derives the next snapshot from the current one and swaps it
    /// in. All or nothing: on error the table is unchanged. Returns the new version.
    pub fn apply(&self, changes: &[Change]) -> Result<u64, RoutingError> {
        let mut retired = self.lock_writer();
        let next = self.current.load().apply(changes)?;
        let version = next.version();
        let previous = self.current.swap(Arc::new(next));
        retired.retire(previous);
        Ok(version)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Retired> {
        // A writer that panicked left no half-written state behind (snapshots are immutable),
        // so a poisoned lock is safe to keep using.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Retired {
    fn retire(&mut self, snapshot: Arc<RoutingSnapshot>) {
        // Free (here, on the writer's thread) every retired snapshot no reader holds any more.
        self.snapshots.retain(|s| Arc::strong_count(s) > 1);
        self.snapshots.push(snapshot);
        if self.snapshots.len() > MAX_RETIRED_SNAPSHOTS {
            self.snapshots.remove(0);
        }
    }
}
