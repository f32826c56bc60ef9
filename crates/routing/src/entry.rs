//! The compiled, shared entries a snapshot is made of: a deployment ready for lookup and the
//! app (versions, split) it embeds. A [`crate::Route`] or [`crate::Reject`] keeps one alive.
//!
//! Both `snapshot` (which builds these) and `decision` (whose results point into them) depend
//! on this module; it depends on neither, so the two never import each other.

use std::sync::Arc;

use crate::cohort::CohortTable;
use crate::model::{AppVersion, Deployment, RuntimeStatus, Scope};
use crate::schedule::Schedule;
use crate::split::{CompiledSplit, ReadyBranches};

/// A connection config of a deployment, resolved to the connection's slot.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionRef {
    pub(crate) id: String,
    pub(crate) slot: u32,
}

/// A deployment compiled for lookup. Shared by snapshots until the deployment changes.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentEntry {
    pub(crate) scope: Arc<Scope>,
    pub(crate) record: Arc<Deployment>,
    pub(crate) app_slot: u32,
    /// The app as of this snapshot; replaced in every entry using it when the app changes, so
    /// a route reaches versions and split without another lookup or reference count.
    pub(crate) app: Arc<AppEntry>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) connections: Arc<[ConnectionRef]>,
    /// Sorted keys of this deployment's numbers (to unlink them on change).
    pub(crate) numbers: Arc<[u64]>,
    /// Caller key → compact cohort row.
    pub(crate) cohort: CohortTable,
    /// `channel_direction` allows inbound calls (copied out of `record`: the lookup reads
    /// only this entry, not the record behind another pointer).
    pub(crate) takes_inbound: bool,
    pub(crate) paused: bool,
}

/// One agent (app) in one scope: its registered versions and its traffic split.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppEntry {
    /// Sorted by version.
    pub(crate) versions: Vec<Arc<AppVersion>>,
    /// `(version, ready)` per entry of `versions`, inline so that a lookup's binary search and
    /// status check read one small array instead of following a pointer per version.
    pub(crate) index: Vec<(u32, bool)>,
    pub(crate) split: Option<AppSplit>,
}

#[derive(Debug, Clone)]
pub(crate) struct AppSplit {
    pub(crate) compiled: CompiledSplit,
    /// Recomputed whenever a version of the app changes.
    pub(crate) ready: ReadyBranches,
}

impl AppEntry {
    pub(crate) fn version_index(&self, version: u32) -> Option<usize> {
        self.index.binary_search_by_key(&version, |&(v, _)| v).ok()
    }

    pub(crate) fn is_ready(&self, version: u32) -> bool {
        self.version_index(version).is_some_and(|i| self.index[i].1)
    }

    /// Call after every change to `versions` or `split`: rebuilds the inline index and the
    /// split's ready branches.
    pub(crate) fn refresh_ready(&mut self) {
        self.index = self
            .versions
            .iter()
            .map(|v| (v.version, v.status == RuntimeStatus::Ready))
            .collect();
        if let Some(split) = &self.split {
            let ready = ReadyBranches::new(&split.compiled, |v| self.is_ready(v));
            if let Some(split) = &mut self.split {
                split.ready = ready;
            }
        }
    }
}
