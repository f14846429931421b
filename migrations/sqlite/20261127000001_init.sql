-- sw2s schema, SQLite flavour. Times are Unix milliseconds; JSON is stored as TEXT;
-- embeddings are little-endian f32 BLOBs. Keep in step with ../postgres.

CREATE TABLE tasks (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL UNIQUE,
    labels             TEXT    NOT NULL,
    settings           TEXT    NOT NULL,
    active_version_id  INTEGER,
    graph_version      INTEGER NOT NULL DEFAULT 0,
    examples_since_job INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

CREATE TABLE examples (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id           INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    external_id       TEXT    NOT NULL,
    text              TEXT    NOT NULL,
    gold_label        INTEGER,
    gold_at           INTEGER,
    weak              TEXT,
    embedding         BLOB,
    encoder_id        TEXT,
    refined           TEXT,
    refined_label     INTEGER,
    pred_label        INTEGER,
    pred_probs        TEXT,
    p_ik              REAL,
    p_ik_source       TEXT,
    scored_version_id INTEGER,
    decision_id       INTEGER,
    decision_label    INTEGER,
    decision_source   TEXT,
    dirty             INTEGER NOT NULL DEFAULT 1,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (task_id, external_id)
);
CREATE INDEX examples_task_id ON examples (task_id, id);
CREATE INDEX examples_dirty ON examples (task_id, id) WHERE dirty = 1;

CREATE TABLE weak_labels (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    example_id  INTEGER NOT NULL REFERENCES examples(id) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    label       INTEGER,
    scores      TEXT    NOT NULL,
    confidence  REAL    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (example_id, source)
);

CREATE TABLE decisions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id          INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    example_id       INTEGER NOT NULL REFERENCES examples(id) ON DELETE CASCADE,
    label            INTEGER,
    source           TEXT    NOT NULL,
    p_ik             REAL,
    p_ik_source      TEXT    NOT NULL,
    tau              REAL,
    probs            TEXT,
    weak             TEXT,
    refined          TEXT,
    model_version_id INTEGER,
    graph_version    INTEGER NOT NULL,
    reason           TEXT    NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX decisions_task ON decisions (task_id, id);
CREATE INDEX decisions_example ON decisions (example_id, id);

CREATE TABLE model_versions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    version      INTEGER NOT NULL,
    manifest     TEXT    NOT NULL,
    heads        BLOB    NOT NULL,
    encoder_path TEXT,
    job_id       INTEGER,
    created_at   INTEGER NOT NULL,
    UNIQUE (task_id, version)
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id          INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    mode             TEXT    NOT NULL,
    trigger_kind     TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    progress         TEXT,
    metrics          TEXT,
    error            TEXT,
    model_version_id INTEGER,
    retry_of         INTEGER,
    owner            TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    heartbeat_at     INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX jobs_task ON jobs (task_id, id);
-- One queued or running job per task: the database is the lock, across processes.
CREATE UNIQUE INDEX jobs_one_active_per_task ON jobs (task_id) WHERE state IN ('queued', 'running');
