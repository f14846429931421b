-- Label Studio annotations that set gold labels. Deletion events carry only annotation ids, so
-- each annotation is remembered with its example; a task annotated twice keeps the other label.
CREATE TABLE label_studio_annotations (
    task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    annotation_id INTEGER NOT NULL,
    example_id TEXT NOT NULL,
    label TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, annotation_id)
);
CREATE INDEX label_studio_annotations_example ON label_studio_annotations (task_id, example_id);
