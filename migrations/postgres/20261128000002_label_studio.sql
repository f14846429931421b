-- Label Studio projects connected to a task as an ML backend: which control of the project's
-- label config carries the task's labels and which data field holds the text.
CREATE TABLE label_studio_projects (
    task_id BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    project TEXT NOT NULL,
    from_name TEXT NOT NULL,
    to_name TEXT NOT NULL,
    text_field TEXT NOT NULL,
    label_config TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, project)
);
