-- switchboard schema v1 (PostgreSQL). Same shape as the SQLite schema; see its comments.
-- Phone numbers use the "C" collation: they are ASCII keys, and byte comparison is both the
-- cheapest and the same on every server whatever its locale.

CREATE TABLE revision_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO revision_counter (id, value) VALUES (1, 0);

CREATE TABLE changes (
    revision     BIGINT PRIMARY KEY,
    origin       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    key          TEXT NOT NULL
);

CREATE TABLE deployments (
    dep_key       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    doc           TEXT NOT NULL,
    created_seq   BIGINT NOT NULL,
    UNIQUE (org_id, workspace_id, deployment_id)
);
CREATE INDEX deployments_by_scope_created ON deployments (org_id, workspace_id, created_seq);

CREATE TABLE deployment_numbers (
    phone_number TEXT COLLATE "C" PRIMARY KEY,
    dep_key      BIGINT NOT NULL REFERENCES deployments (dep_key) ON DELETE CASCADE
);
CREATE INDEX deployment_numbers_by_deployment ON deployment_numbers (dep_key);

CREATE TABLE connections (
    org_id        TEXT NOT NULL,
    workspace_id  TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    doc           TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, connection_id)
);

CREATE TABLE app_versions (
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    version      BIGINT NOT NULL,
    doc          TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, app_id, version)
);

CREATE TABLE traffic_splits (
    org_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    doc          TEXT NOT NULL,
    PRIMARY KEY (org_id, workspace_id, app_id)
);

CREATE TABLE cohorts (
    dep_key   BIGINT NOT NULL REFERENCES deployments (dep_key) ON DELETE CASCADE,
    cohort_id TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (dep_key, cohort_id)
);

-- No foreign key here, unlike SQLite: PostgreSQL checks one with a trigger per inserted row,
-- a large share of a million-row upload. Integrity holds without it because writers serialise
-- on revision_counter: insert_cohort_members checks the deployment under that lock, and
-- delete_deployment deletes the members under it.
-- As in SQLite, the key is the number's digits as an integer: cheaper to compare and index.
CREATE TABLE cohort_members (
    dep_key         BIGINT NOT NULL,
    phone_key       BIGINT NOT NULL,
    phone_number    TEXT COLLATE "C" NOT NULL,
    user_identifier TEXT NOT NULL,
    app_variables   TEXT NOT NULL,
    app_overrides   TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    PRIMARY KEY (dep_key, phone_key)
);
CREATE INDEX cohort_members_by_revision ON cohort_members (revision);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
