-- One index per attempt instead of two (docs/design.md, "The hot path is
-- batched"): (subject_id, attempt) already identifies an attempt and is
-- what every reader looks attempts up by, so it becomes the primary key;
-- the identity column stays, without an index of its own.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_pkey;
ALTER TABLE delivery_attempts
    ADD CONSTRAINT delivery_attempts_pkey PRIMARY KEY USING INDEX delivery_attempts_subject_idx;
