//! The immutable routing snapshot: built once from all records, then derived from its
//! predecessor change by change with structural sharing.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rpds::{HashTrieMapSync, HashTrieSetSync};

use crate::cohort::CohortTable;
use crate::decision::{
    Reject, RejectReason, Route, RouteDecision, SplitChoice, RUNTIME_PROVISIONING_RETRY_AFTER_SECS,
};
use crate::entry::{AppEntry, AppSplit, ConnectionRef, DeploymentEntry};
use crate::error::RoutingError;
use crate::model::{
    AppVersion, ChannelDirection, CohortMember, Connection, Deployment, DeploymentStatus,
    RuntimeStatus, Scope, TrafficSplit,
};
use crate::number::{normalize_with, CountryCode, E164};
use crate::persist::{ShardedMap, Slab};
use crate::schedule::Schedule;
use crate::sources::SourceFilter;
use crate::split::{call_hash, CompiledSplit, ReadyBranches, SPLIT_BUCKETS};

/// At least 4096 number shards (more for large tables, ~256 numbers a shard, see
/// `persist::KEYS_PER_SHARD`): at 1M numbers a shard holds ~250 keys (~5 KiB), so a deployment
/// with 100 numbers copies ~100 small tables on change (well under a millisecond), and the
/// shard pointer array (64 KiB; 512 KiB at 10M) stays in L2 for lookups.
const MIN_NUMBER_SHARD_BITS: u32 = 12;

/// Snapshot-wide settings that affect how numbers are read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutingSettings {
    /// Country code for national-format numbers (`"91"`: `080 4716 8000` → `+918047168000`).
    /// `None` (the default) accepts only international formats, the safe choice for a gateway
    /// whose carriers are not all in one country.
    pub default_country_code: Option<String>,
}

/// Everything a snapshot is built from (the store's `Dataset` minus its revision).
#[derive(Debug, Clone, Default)]
pub struct RoutingData {
    pub deployments: Vec<(Scope, Deployment)>,
    pub connections: Vec<(Scope, Connection)>,
    pub app_versions: Vec<(Scope, AppVersion)>,
    pub splits: Vec<(Scope, TrafficSplit)>,
    /// `(scope, deployment_id, member)`; for one caller in one deployment the last row wins.
    pub cohort_members: Vec<(Scope, String, CohortMember)>,
    pub settings: RoutingSettings,
}

/// One committed write, applied to the live snapshot right after the store commits it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    UpsertDeployment(Scope, Deployment),
    /// Removes the deployment and its cohort. Removing an unknown id is a no-op (idempotent,
    /// so replayed change notices are harmless).
    RemoveDeployment(Scope, String),
    UpsertConnection(Scope, Connection),
    RemoveConnection(Scope, String),
    UpsertAppVersion(Scope, AppVersion),
    RemoveAppVersion(Scope, String, u32),
    SetSplit(Scope, TrafficSplit),
    RemoveSplit(Scope, String),
    /// Later rows win over earlier ones (and over rows already in the snapshot) per caller.
    UpsertCohortMembers(Scope, String, Vec<CohortMember>),
}

/// What a number in the table points at: a deployment slot and which of its connection configs
/// lists the number. 8 bytes, `Copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NumberTarget {
    slot: u32,
    connection: u16,
}

type IdKey = (Scope, String);

fn id_key(scope: &Scope, id: &str) -> IdKey {
    (scope.clone(), id.to_string())
}

/// An immutable routing table. Readers get it from [`crate::RoutingTable::load`]; writers derive
/// the next one with [`RoutingSnapshot::apply`].
#[derive(Clone)]
pub struct RoutingSnapshot {
    version: u64,
    settings: RoutingSettings,
    country_code: Option<CountryCode>,
    numbers: ShardedMap<NumberTarget>,
    deployments: Slab<DeploymentEntry>,
    deployment_ids: HashTrieMapSync<IdKey, u32>,
    free_slots: Arc<Vec<u32>>,
    apps: Slab<AppEntry>,
    app_ids: HashTrieMapSync<IdKey, u32>,
    /// App slot → deployment slots whose entries embed that app.
    app_users: HashTrieMapSync<u32, HashTrieSetSync<u32>>,
    connections: Slab<Connection>,
    connection_ids: HashTrieMapSync<IdKey, u32>,
    sources: Arc<SourceFilter>,
    sources_dirty: bool,
}

impl fmt::Debug for RoutingSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingSnapshot")
            .field("version", &self.version)
            .field("settings", &self.settings)
            .field("numbers", &self.numbers.len())
            .field("deployments", &self.deployment_ids.size())
            .field("apps", &self.app_ids.size())
            .field("connections", &self.connection_ids.size())
            .finish_non_exhaustive()
    }
}

impl RoutingSnapshot {
    /// An empty table (every call is [`RejectReason::NoRoute`]); version 0.
    pub fn empty(settings: RoutingSettings) -> Result<Self, RoutingError> {
        Self::with_capacity(settings, 0)
    }

    fn with_capacity(settings: RoutingSettings, numbers: usize) -> Result<Self, RoutingError> {
        let country_code = match &settings.default_country_code {
            Some(value) => Some(CountryCode::parse(value).map_err(|reason| {
                RoutingError::InvalidCountryCode {
                    value: value.clone(),
                    reason,
                }
            })?),
            None => None,
        };
        Ok(Self {
            version: 0,
            settings,
            country_code,
            numbers: ShardedMap::with_capacity(MIN_NUMBER_SHARD_BITS, numbers),
            deployments: Slab::default(),
            deployment_ids: HashTrieMapSync::new_sync(),
            free_slots: Arc::new(Vec::new()),
            apps: Slab::default(),
            app_ids: HashTrieMapSync::new_sync(),
            app_users: HashTrieMapSync::new_sync(),
            connections: Slab::default(),
            connection_ids: HashTrieMapSync::new_sync(),
            sources: Arc::new(SourceFilter::default()),
            sources_dirty: false,
        })
    }

    /// Builds a complete snapshot (version 1) at startup or after a settings change. Fails on
    /// the first invalid record: a bad schedule or split, an unparsable number, a number used
    /// by two deployments, or cohort rows for a deployment that does not exist.
    pub fn build(data: RoutingData) -> Result<Self, RoutingError> {
        let expected_numbers = data
            .deployments
            .iter()
            .flat_map(|(_, d)| d.connection_configs.iter())
            .map(|c| c.phone_numbers.len())
            .sum();
        let mut snapshot = Self::with_capacity(data.settings, expected_numbers)?;
        for (scope, connection) in data.connections {
            snapshot.upsert_connection(&scope, Arc::new(connection));
        }
        for (scope, version) in data.app_versions {
            snapshot.upsert_app_version(&scope, version);
        }
        for (scope, split) in data.splits {
            snapshot.set_split(&scope, &split)?;
        }
        for (scope, deployment) in data.deployments {
            snapshot.upsert_deployment(&scope, Arc::new(deployment))?;
        }
        // Rows usually arrive grouped by deployment: apply each run as one batch.
        let mut rows = data.cohort_members.into_iter().peekable();
        while let Some((scope, deployment_id, first)) = rows.next() {
            let mut batch = vec![first];
            while let Some((_, member)) = rows
                .next_if(|(s, d, _)| *s == scope && *d == deployment_id)
                .map(|(s, _, m)| (s, m))
            {
                batch.push(member);
            }
            snapshot.upsert_cohort_members(&scope, &deployment_id, batch)?;
        }
        snapshot.finish();
        snapshot.version = 1;
        Ok(snapshot)
    }

    /// Derives the next snapshot (version + 1) from this one and `changes`, all or nothing.
    /// Unchanged shards, deployments and apps are shared with `self`, so a change to one
    /// deployment costs about as much as that deployment's size, not the table's.
    pub fn apply(&self, changes: &[Change]) -> Result<Self, RoutingError> {
        let mut next = self.clone();
        for change in changes {
            match change {
                Change::UpsertDeployment(scope, deployment) => {
                    next.upsert_deployment(scope, Arc::new(deployment.clone()))?
                }
                Change::RemoveDeployment(scope, id) => next.remove_deployment(scope, id),
                Change::UpsertConnection(scope, connection) => {
                    next.upsert_connection(scope, Arc::new(connection.clone()))
                }
                Change::RemoveConnection(scope, id) => next.remove_connection(scope, id),
                Change::UpsertAppVersion(scope, version) => {
                    next.upsert_app_version(scope, version.clone())
                }
                Change::RemoveAppVersion(scope, app_id, version) => {
                    next.remove_app_version(scope, app_id, *version)
                }
                Change::SetSplit(scope, split) => next.set_split(scope, split)?,
                Change::RemoveSplit(scope, app_id) => next.remove_split(scope, app_id),
                Change::UpsertCohortMembers(scope, deployment_id, members) => {
                    next.upsert_cohort_members(scope, deployment_id, members.iter().cloned())?
                }
            }
        }
        next.finish();
        next.version = self.version + 1;
        Ok(next)
    }

    /// Routes one INVITE. `called` and `caller` may be bare numbers or `sip:`/`tel:` URIs;
    /// `call_id` drives the traffic split. Pure: the same inputs give the same decision.
    ///
    /// Order of checks: number → deployment direction → paused → schedule → version (split)
    /// → runtime status → cohort.
    pub fn route(
        &self,
        now: DateTime<Utc>,
        called: &str,
        caller: &str,
        call_id: &str,
    ) -> RouteDecision {
        let called = match normalize_with(called, self.country_code) {
            Ok(number) => number,
            Err(error) => {
                let mut reject = Reject::new(RejectReason::InvalidCalledNumber);
                reject.number_error = Some(error);
                return RouteDecision::Reject(reject);
            }
        };
        let reject = |reason: RejectReason, entry: Option<&Arc<DeploymentEntry>>| {
            let mut reject = Reject::new(reason);
            reject.called = Some(called);
            reject.deployment = entry.cloned();
            reject
        };
        let Some((target, entry)) = self.lookup(called.key()) else {
            return RouteDecision::Reject(reject(RejectReason::NoRoute, None));
        };
        let record = &entry.record;
        if !entry.takes_inbound {
            return RouteDecision::Reject(reject(RejectReason::InboundDisabled, Some(entry)));
        }
        if entry.paused {
            return RouteDecision::Reject(reject(RejectReason::Paused, Some(entry)));
        }
        if let Some(schedule) = &entry.schedule {
            if !schedule.is_open(now) {
                let mut rejected = reject(RejectReason::OutsideSchedule, Some(entry));
                rejected.retry_after = schedule
                    .next_open(now)
                    .map(|at| u32::try_from((at - now).num_seconds().max(1)).unwrap_or(u32::MAX));
                return RouteDecision::Reject(rejected);
            }
        }
        let app = &*entry.app;
        let (version, split) = match &app.split {
            None => (record.app_version, None),
            Some(split) => {
                let hash = call_hash(call_id);
                let bucket = (hash % u64::from(SPLIT_BUCKETS)) as u16;
                match split.compiled.branch_for(bucket) {
                    None => (record.app_version, None),
                    Some(drawn) if app.is_ready(drawn.version) => (
                        drawn.version,
                        Some(SplitChoice {
                            bucket,
                            share_basis_points: drawn.share,
                            redrawn_from: None,
                        }),
                    ),
                    Some(drawn) => match split.ready.redraw(hash) {
                        Some(served) => (
                            served.version,
                            Some(SplitChoice {
                                bucket,
                                share_basis_points: served.share,
                                redrawn_from: Some(drawn.version),
                            }),
                        ),
                        // No version of the split is ready: report the drawn one's problem.
                        None => (drawn.version, None),
                    },
                }
            }
        };
        let runtime = match app.version_index(version) {
            None => {
                let mut rejected = reject(RejectReason::RuntimeMissing, Some(entry));
                rejected.app_version = Some(version);
                return RouteDecision::Reject(rejected);
            }
            Some(index) if !app.index[index].1 => {
                let runtime = &app.versions[index];
                let mut rejected = reject(RejectReason::RuntimeNotReady, Some(entry));
                rejected.app_version = Some(version);
                rejected.runtime_status = Some(runtime.status);
                rejected.retry_after = (runtime.status == RuntimeStatus::Provisioning)
                    .then_some(RUNTIME_PROVISIONING_RETRY_AFTER_SECS);
                return RouteDecision::Reject(rejected);
            }
            Some(index) => index as u16,
        };
        let caller = normalize_with(caller, self.country_code).ok();
        let cohort = caller.and_then(|c| entry.cohort.get(c.key()));
        RouteDecision::Accept(Route {
            deployment: Arc::clone(entry),
            runtime,
            connection: target.connection,
            split,
            cohort,
            called,
            caller,
        })
    }

    #[inline]
    fn lookup(&self, key: u64) -> Option<(NumberTarget, &Arc<DeploymentEntry>)> {
        let target = *self.numbers.get(key)?;
        Some((target, self.deployments.get(target.slot)?))
    }

    /// The connection (trunk) whose deployment config lists `called`, for trunk authentication
    /// (digest credentials, allowed sources). `None` if the number is unknown or its connection
    /// is not defined.
    pub fn trunk_for_number(&self, called: &str) -> Option<&Connection> {
        let number = normalize_with(called, self.country_code).ok()?;
        let (target, entry) = self.lookup(number.key())?;
        let reference = entry.connections.get(usize::from(target.connection))?;
        self.connections.get(reference.slot).map(|c| &**c)
    }

    /// Is `ip` inside some connection's `allowed_addresses`? Checked before parsing a
    /// datagram from a peer; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn admits_source(&self, ip: IpAddr) -> bool {
        self.sources.admits(ip)
    }

    /// 0 for [`RoutingSnapshot::empty`], 1 after [`RoutingSnapshot::build`], +1 per `apply`.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn settings(&self) -> &RoutingSettings {
        &self.settings
    }

    /// The parsed default country code, for normalising numbers the same way the table does.
    pub fn country_code(&self) -> Option<CountryCode> {
        self.country_code
    }

    /// Normalises a number with this snapshot's settings.
    pub fn normalize(&self, raw: &str) -> Result<E164, crate::number::NumberError> {
        normalize_with(raw, self.country_code)
    }

    /// Phone numbers in the table (a metrics gauge).
    pub fn number_count(&self) -> usize {
        self.numbers.len()
    }

    /// Deployments in the table (a metrics gauge).
    pub fn deployment_count(&self) -> usize {
        self.deployment_ids.size()
    }

    /// Cohort rows across all deployments.
    pub fn cohort_member_count(&self) -> usize {
        self.deployments.iter().map(|(_, d)| d.cohort.len()).sum()
    }

    /// The deployment owning `called`, with its scope.
    pub fn deployment_for_number(&self, called: &str) -> Option<(&Scope, &Deployment)> {
        let number = normalize_with(called, self.country_code).ok()?;
        let (_, entry) = self.lookup(number.key())?;
        Some((&entry.scope, &entry.record))
    }

    /// A deployment by id.
    pub fn deployment(&self, scope: &Scope, deployment_id: &str) -> Option<&Deployment> {
        let slot = *self.deployment_ids.get(&id_key(scope, deployment_id))?;
        self.deployments.get(slot).map(|e| &*e.record)
    }

    /// Every deployment, in slot order.
    pub fn deployments(&self) -> impl Iterator<Item = (&Scope, &Deployment)> + '_ {
        self.deployments
            .iter()
            .map(|(_, e)| (&*e.scope, &*e.record))
    }

    fn finish(&mut self) {
        if self.sources_dirty {
            // A digest connection without an allowlist admits any source that authenticates,
            // so the screen in front of the SIP engine must let every source through to its
            // (stateless) challenge.
            let anywhere: [ipnet::IpNet; 2] = [
                ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
                ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
            ];
            let filter = SourceFilter::new(self.connections.iter().flat_map(|(_, c)| {
                let open = c.allowed_addresses.is_empty() && c.digest.is_some();
                c.allowed_addresses
                    .iter()
                    .chain(anywhere.iter().filter(move |_| open))
            }));
            self.sources = Arc::new(filter);
            self.sources_dirty = false;
        }
    }

    fn upsert_deployment(
        &mut self,
        scope: &Scope,
        deployment: Arc<Deployment>,
    ) -> Result<(), RoutingError> {
        let deployment_id = deployment.deployment_id.clone();
        let in_deployment = |source: RoutingError| RoutingError::InDeployment {
            deployment_id: deployment_id.clone(),
            source: Box::new(source),
        };
        let schedule = deployment
            .inbound_config
            .as_ref()
            .map(Schedule::compile)
            .transpose()
            .map_err(in_deployment)?;
        let configs = &deployment.connection_configs;
        if configs.len() > usize::from(u16::MAX) {
            return Err(RoutingError::TooManyConnections {
                deployment_id,
                count: configs.len(),
                max: usize::from(u16::MAX),
            });
        }
        let mut numbers: Vec<(u64, u16)> =
            Vec::with_capacity(configs.iter().map(|c| c.phone_numbers.len()).sum());
        for (index, config) in configs.iter().enumerate() {
            for raw in &config.phone_numbers {
                let number = normalize_with(raw, self.country_code).map_err(|reason| {
                    in_deployment(RoutingError::InvalidNumber {
                        what: "phone number",
                        number: raw.clone(),
                        reason,
                    })
                })?;
                numbers.push((number.key(), index as u16));
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        let number_text =
            |key: u64| E164::from_key(key).map_or_else(|| key.to_string(), |n| n.to_string());
        if let Some(pair) = numbers.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            // The same number under two of this deployment's connections: which trunk owns it?
            return Err(RoutingError::DuplicateNumber {
                number: number_text(pair[0].0),
                deployment_id: deployment_id.clone(),
                owner_deployment_id: deployment_id,
            });
        }
        let key = id_key(scope, &deployment_id);
        let existing = self.deployment_ids.get(&key).copied();
        for &(number, _) in &numbers {
            if let Some((target, owner)) = self.lookup(number) {
                if Some(target.slot) != existing {
                    return Err(RoutingError::DuplicateNumber {
                        number: number_text(number),
                        deployment_id,
                        owner_deployment_id: owner.record.deployment_id.clone(),
                    });
                }
            }
        }

        let connections: Arc<[ConnectionRef]> = configs
            .iter()
            .map(|c| ConnectionRef {
                id: c.connection_id.clone(),
                slot: self.intern_connection(scope, &c.connection_id),
            })
            .collect();
        let app_slot = self.intern_app(scope, &deployment.app_id);
        let app = self.apps.get(app_slot).cloned().unwrap_or_default();
        let previous = existing
            .and_then(|slot| self.deployments.get(slot))
            .cloned();
        let slot = match existing {
            Some(slot) => slot,
            None => self.allocate_slot(),
        };
        if let Some(previous) = previous.as_ref().filter(|p| p.app_slot != app_slot) {
            self.unlink_app_user(previous.app_slot, slot);
        }
        let mut users = self
            .app_users
            .get(&app_slot)
            .cloned()
            .unwrap_or_else(HashTrieSetSync::new_sync);
        users.insert_mut(slot);
        self.app_users.insert_mut(app_slot, users);
        let cohort = match &previous {
            Some(previous) => {
                for &old in previous.numbers.iter() {
                    let kept = numbers.binary_search_by_key(&old, |&(n, _)| n).is_ok();
                    if !kept && self.numbers.get(old).is_some_and(|t| t.slot == slot) {
                        self.numbers.remove(old);
                    }
                }
                previous.cohort.clone()
            }
            None => CohortTable::default(),
        };
        for &(number, connection) in &numbers {
            let target = NumberTarget { slot, connection };
            // Only touch (and so copy) a shard when the entry really changes.
            if self.numbers.get(number) != Some(&target) {
                self.numbers.insert(number, target);
            }
        }
        let entry = DeploymentEntry {
            takes_inbound: deployment.channel_direction != ChannelDirection::Outbound,
            paused: deployment.status == DeploymentStatus::Paused,
            scope: previous
                .as_ref()
                .filter(|p| *p.scope == *scope)
                .map_or_else(|| Arc::new(scope.clone()), |p| Arc::clone(&p.scope)),
            record: deployment,
            app_slot,
            app,
            schedule,
            connections,
            numbers: numbers.iter().map(|&(n, _)| n).collect(),
            cohort,
        };
        self.deployments.set(slot, Some(Arc::new(entry)));
        self.deployment_ids.insert_mut(key, slot);
        Ok(())
    }

    fn allocate_slot(&mut self) -> u32 {
        match Arc::make_mut(&mut self.free_slots).pop() {
            Some(slot) => slot,
            None => self.deployments.len(),
        }
    }

    fn remove_deployment(&mut self, scope: &Scope, deployment_id: &str) {
        let key = id_key(scope, deployment_id);
        let Some(&slot) = self.deployment_ids.get(&key) else {
            return;
        };
        if let Some(entry) = self.deployments.get(slot).cloned() {
            for &number in entry.numbers.iter() {
                if self.numbers.get(number).is_some_and(|t| t.slot == slot) {
                    self.numbers.remove(number);
                }
            }
            self.unlink_app_user(entry.app_slot, slot);
        }
        self.deployments.set(slot, None);
        self.deployment_ids.remove_mut(&key);
        Arc::make_mut(&mut self.free_slots).push(slot);
    }

    fn unlink_app_user(&mut self, app_slot: u32, deployment_slot: u32) {
        if let Some(users) = self.app_users.get(&app_slot) {
            let mut users = users.clone();
            users.remove_mut(&deployment_slot);
            self.app_users.insert_mut(app_slot, users);
        }
    }

    /// Connection slots are never freed: deployments refer to connections by slot, and a
    /// connection may be defined after (or re-defined after removal of) its deployments.
    fn intern_connection(&mut self, scope: &Scope, connection_id: &str) -> u32 {
        let key = id_key(scope, connection_id);
        if let Some(&slot) = self.connection_ids.get(&key) {
            return slot;
        }
        let slot = self.connection_ids.size() as u32;
        self.connection_ids.insert_mut(key, slot);
        slot
    }

    fn upsert_connection(&mut self, scope: &Scope, connection: Arc<Connection>) {
        let slot = self.intern_connection(scope, &connection.connection_id);
        self.connections.set(slot, Some(connection));
        self.sources_dirty = true;
    }

    fn remove_connection(&mut self, scope: &Scope, connection_id: &str) {
        if let Some(&slot) = self.connection_ids.get(&id_key(scope, connection_id)) {
            self.connections.set(slot, None);
            self.sources_dirty = true;
        }
    }

    /// App slots are never freed either (an app entry without versions or split is inert).
    fn intern_app(&mut self, scope: &Scope, app_id: &str) -> u32 {
        let key = id_key(scope, app_id);
        if let Some(&slot) = self.app_ids.get(&key) {
            return slot;
        }
        let slot = self.app_ids.size() as u32;
        self.app_ids.insert_mut(key, slot);
        self.apps.set(slot, Some(Arc::new(AppEntry::default())));
        slot
    }

    fn update_app(&mut self, slot: u32, update: impl FnOnce(&mut AppEntry)) {
        let mut app = self
            .apps
            .get(slot)
            .map(|a| (**a).clone())
            .unwrap_or_default();
        update(&mut app);
        app.refresh_ready();
        let app = Arc::new(app);
        self.apps.set(slot, Some(Arc::clone(&app)));
        // Every deployment of this app embeds it: hand them the new one.
        let users: Vec<u32> = self
            .app_users
            .get(&slot)
            .map(|u| u.iter().copied().collect())
            .unwrap_or_default();
        for deployment_slot in users {
            if let Some(entry) = self.deployments.get(deployment_slot) {
                let mut entry = (**entry).clone();
                entry.app = Arc::clone(&app);
                self.deployments.set(deployment_slot, Some(Arc::new(entry)));
            }
        }
    }

    fn upsert_app_version(&mut self, scope: &Scope, version: AppVersion) {
        let slot = self.intern_app(scope, &version.app_id);
        self.update_app(slot, |app| {
            match app
                .versions
                .binary_search_by_key(&version.version, |v| v.version)
            {
                Ok(i) => app.versions[i] = Arc::new(version),
                Err(i) => app.versions.insert(i, Arc::new(version)),
            }
        });
    }

    fn remove_app_version(&mut self, scope: &Scope, app_id: &str, version: u32) {
        if let Some(&slot) = self.app_ids.get(&id_key(scope, app_id)) {
            self.update_app(slot, |app| app.versions.retain(|v| v.version != version));
        }
    }

    fn set_split(&mut self, scope: &Scope, split: &TrafficSplit) -> Result<(), RoutingError> {
        let compiled = CompiledSplit::compile(split)?;
        let slot = self.intern_app(scope, &split.app_id);
        self.update_app(slot, |app| {
            let ready = ReadyBranches::new(&compiled, |_| false);
            app.split = Some(AppSplit { compiled, ready });
        });
        Ok(())
    }

    fn remove_split(&mut self, scope: &Scope, app_id: &str) {
        if let Some(&slot) = self.app_ids.get(&id_key(scope, app_id)) {
            self.update_app(slot, |app| app.split = None);
        }
    }

    fn upsert_cohort_members(
        &mut self,
        scope: &Scope,
        deployment_id: &str,
        members: impl IntoIterator<Item = CohortMember>,
    ) -> Result<(), RoutingError> {
        let mut members = members.into_iter().peekable();
        if members.peek().is_none() {
            // No rows, nothing to attach: a no-op even for an unknown deployment, as in `build`.
            return Ok(());
        }
        let unknown = || RoutingError::UnknownDeployment {
            scope: scope.clone(),
            deployment_id: deployment_id.to_string(),
        };
        let slot = *self
            .deployment_ids
            .get(&id_key(scope, deployment_id))
            .ok_or_else(unknown)?;
        let entry = self.deployments.get(slot).ok_or_else(unknown)?;
        let mut entry = (**entry).clone();
        let rows = members
            .map(|member| {
                let number =
                    normalize_with(&member.phone_number, self.country_code).map_err(|reason| {
                        RoutingError::InDeployment {
                            deployment_id: deployment_id.to_string(),
                            source: Box::new(RoutingError::InvalidNumber {
                                what: "cohort phone number",
                                number: member.phone_number.clone(),
                                reason,
                            }),
                        }
                    })?;
                Ok((number.key(), member))
            })
            .collect::<Result<Vec<_>, RoutingError>>()?;
        entry.cohort.upsert(rows);
        self.deployments.set(slot, Some(Arc::new(entry)));
        Ok(())
    }
}
