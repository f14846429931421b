-- Labels that never get worse: the graph's output moves to `smoothed`; `refined` is the
-- refined weak label in force (smoothed, or the weak aggregate when smoothing is bypassed);
-- every decision carries a calibrated confidence; abstaining decisions keep what they would
-- have said; each weak label keeps its argmax for the per-source summary.
ALTER TABLE examples ADD COLUMN smoothed TEXT;
UPDATE examples SET smoothed = refined;
ALTER TABLE examples ADD COLUMN confidence DOUBLE PRECISION;
ALTER TABLE examples ADD COLUMN confidence_source TEXT;
ALTER TABLE examples ADD COLUMN suggested_label BIGINT;
ALTER TABLE decisions ADD COLUMN confidence DOUBLE PRECISION;
ALTER TABLE weak_labels ADD COLUMN vote BIGINT;
UPDATE weak_labels SET vote = label WHERE label IS NOT NULL;
CREATE INDEX weak_labels_example ON weak_labels (example_id, source);
CREATE INDEX examples_gold ON examples (task_id) WHERE gold_label IS NOT NULL;
-- Decide every example again under the new rule.
UPDATE examples SET dirty = 1;
