-- The dashboard counts label shares in SQL: the weak aggregate's argmax gets a column beside
-- the JSON (filled from now on as aggregates are written; older rows count once re-aggregated).
ALTER TABLE examples ADD COLUMN weak_label BIGINT;
CREATE INDEX decisions_task_time ON decisions (task_id, created_at);
