-- sw2s schema, PostgreSQL flavour. Times are Unix milliseconds; JSON is stored as TEXT;
-- embeddings are little-endian f32 BYTEA. Keep in step with ../sqlite.

CREATE TABLE tasks (
    id                 BIGSERIAL PRIMARY KEY,
    name               TEXT    NOT NULL UNIQUE,
    labels             TEXT    NOT NULL,
    settings           TEXT    NOT NULL,
    active_version_id  BIGINT,
    graph_version      BIGINT NOT NULL DEFAULT 0,
    examples_since_job BIGINT NOT NULL DEFAULT 0,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE examples (
    id                BIGSERIAL PRIMARY KEY,
    task_id           BIGINT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    external_id       TEXT    NOT NULL,
    text              TEXT    NOT NULL,
    gold_label        BIGINT,
    gold_at           BIGINT,
    weak              TEXT,
    embedding         BYTEA,
    encoder_id        TEXT,
    refined           TEXT,
    refined_label     BIGINT,
    pred_label        BIGINT,
    pred_probs        TEXT,
    p_ik              DOUBLE PRECISION,
    p_ik_source       TEXT,
    scored_version_id BIGINT,
    decision_id       BIGINT,
    decision_label    BIGINT,
    decision_source   TEXT,
    dirty             BIGINT NOT NULL DEFAULT 1,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (task_id, external_id)
);
CREATE INDEX examples_task_id ON examples (task_id, id);
CREATE INDEX examples_dirty ON examples (task_id, id) WHERE dirty = 1;

CREATE TABLE weak_labels (
    id          BIGSERIAL PRIMARY KEY,
    example_id  BIGINT NOT NULL REFERENCES examples(id) ON DELETE CASCADE,
    source      TEXT    NOT NULL,
    label       BIGINT,
    scores      TEXT    NOT NULL,
    confidence  DOUBLE PRECISION    NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (example_id, source)
);

CREATE TABLE decisions (
    id               BIGSERIAL PRIMARY KEY,
    task_id          BIGINT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    example_id       BIGINT NOT NULL REFERENCES examples(id) ON DELETE CASCADE,
    label            BIGINT,
    source           TEXT    NOT NULL,
    p_ik             DOUBLE PRECISION,
    p_ik_source      TEXT    NOT NULL,
    tau              DOUBLE PRECISION,
    probs            TEXT,
    weak             TEXT,
    refined          TEXT,
    model_version_id BIGINT,
    graph_version    BIGINT NOT NULL,
    reason           TEXT    NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX decisions_task ON decisions (task_id, id);
CREATE INDEX decisions_example ON decisions (example_id, id);

CREATE TABLE model_versions (
    id           BIGSERIAL PRIMARY KEY,
    task_id      BIGINT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    version      BIGINT NOT NULL,
    manifest     TEXT    NOT NULL,
    heads        BYTEA    NOT NULL,
    encoder_path TEXT,
    job_id       BIGINT,
    created_at   BIGINT NOT NULL,
    UNIQUE (task_id, version)
);

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    task_id          BIGINT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    mode             TEXT    NOT NULL,
    trigger_kind     TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    params           TEXT    NOT NULL,
    progress         TEXT,
    metrics          TEXT,
    error            TEXT,
    model_version_id BIGINT,
    retry_of         BIGINT,
    owner            TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    heartbeat_at     BIGINT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX jobs_task ON jobs (task_id, id);
-- One queued or running job per task: the database is the lock, across processes.
CREATE UNIQUE INDEX jobs_one_active_per_task ON jobs (task_id) WHERE state IN ('queued', 'running');
