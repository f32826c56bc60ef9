//! The state every part of the daemon shares: cheap to clone (all `Arc`s inside).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;

/// Shared application state, handed to the admin API, the SIP service and background tasks.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Set once the routing snapshot has been built from the store; `/readyz` reports it.
    ready: Arc<AtomicBool>,
}

impl AppState {
    /// Builds the state around a loaded config; not ready until [`AppState::mark_ready`].
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Call once the routing snapshot is loaded and the listeners are bound.
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the gateway can route calls (snapshot loaded).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
