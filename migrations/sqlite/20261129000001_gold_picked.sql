-- How an example came to be gold-labelled, as the client says: 'random' (a random sample,
-- such as the review queue's order=sample) or 'review' (picked as hard, such as the queue's
-- default order); NULL when not said. Gold picked for review trains but does not judge.
ALTER TABLE examples ADD COLUMN gold_picked TEXT;
