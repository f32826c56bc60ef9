-- switchboard schema v2 (SQLite): the webhook outbox.
-- A delivery is written here before its first attempt and deleted once delivered (or given
-- up), so a restart or a crash never loses one. `next_attempt_ms` (unix milliseconds) is when
-- it is due; claiming a row pushes it forward by a lease so one attempt runs at a time.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    body            TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_ms      INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms);
