-- switchboard schema v1 (SQLite).
-- Documents (deployments, connections, ...) are stored as the JSON of their domain type; the
-- columns beside them exist only to key, index and constrain. Deployments get a surrogate
-- integer key so the large per-caller tables reference 8 bytes instead of three strings.

-- A single-row counter bumped by every write: the revision a write returns.
CREATE TABLE revision_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision_counter (id, value) VALUES (1, 0);

-- One row per committed write (bounded by pruning): lets a reconnecting listener catch up.
CREATE TABLE changes (
    revision     INTEGER PRIMARY KEY,
    origin       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL
);

CREATE TABLE deployments (
    dep_key       INTEGER PRIMARY KEY,
    org_id        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    doc           TEXT NOT NULL,
    created_seq   INTEGER NOT NULL,
    UNIQUE (org_id, workspace_id, deployment_id)
);
CREATE INDEX deployments_by_scope_created ON deployments (org_id, workspace_id, created_seq);

-- A number rings in one place: the primary key makes a second owner impossible.
CREATE TABLE deployment_numbers (
    phone_number TEXT PRIMARY KEY,
    dep_key      INTEGER NOT NULL REFERENCES deployments (dep_key) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX deployment_numbers_by_deployment ON deployment_numbers (dep_key);

CREATE TABLE connections (
    org_id        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    doc           TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, connection_id)
) WITHOUT ROWID;

CREATE TABLE app_versions (
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    version      INTEGER NOT NULL,
    doc          TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, app_id, version)
) WITHOUT ROWID;

CREATE TABLE traffic_splits (
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    doc          TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, app_id)
) WITHOUT ROWID;

CREATE TABLE cohorts (
    dep_key   INTEGER NOT NULL REFERENCES deployments (dep_key) ON DELETE CASCADE,
    cohort_id TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (dep_key, cohort_id)
) WITHOUT ROWID;

-- The latest upload wins per (deployment, caller): rows are upserted, `revision` says which
-- write put them there. A rowid table, not WITHOUT ROWID keyed by number: uploads arrive in
-- random number order, and WAL rewrites every page a commit dirties. Appending rows in arrival
-- order keeps the dirtied pages to the unique index instead of the whole table, and keying
-- that index by the number's digits as an integer (`phone_key`) halves it again.
CREATE TABLE cohort_members (
    member_key      INTEGER PRIMARY KEY,
    dep_key         INTEGER NOT NULL REFERENCES deployments (dep_key) ON DELETE CASCADE,
    phone_key       INTEGER NOT NULL,
    phone_number    TEXT NOT NULL,
    user_identifier TEXT NOT NULL,
    app_variables   TEXT NOT NULL,
    app_overrides   TEXT NOT NULL,
    revision        INTEGER NOT NULL
);
CREATE UNIQUE INDEX cohort_members_by_number ON cohort_members (dep_key, phone_key);
CREATE INDEX cohort_members_by_revision ON cohort_members (revision);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
