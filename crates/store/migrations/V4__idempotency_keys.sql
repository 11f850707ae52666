-- Idempotency keys (docs/api.md, "Retrying safely"): a client that sends a creating POST
-- again with the same key within 24 hours gets the first response back and
-- nothing is created twice. The record is written in the transaction that
-- creates the row it answers for, so a key exists exactly when its row does.
--
--   scope        what the key came with: 'request' (the Idempotency-Key
--                header of one POST), 'item' (a batch item's own
--                idempotency_key), 'batch_item' (an item of a batch sent with
--                an Idempotency-Key header: the header's key and the item's
--                position)
--   fingerprint  SHA-256 of the request (method, path, canonical JSON body),
--                or of the item: the same key with another body is refused
--   status, response, location   the first response, byte for byte
CREATE TABLE idempotency_keys (
    account_id   bigint NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('request', 'item', 'batch_item')),
    key          text NOT NULL,
    fingerprint  bytea NOT NULL,
    status       smallint NOT NULL,
    response     bytea NOT NULL,
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (account_id, scope, key)
);
-- the cleanup deletes expired keys oldest first, in batches
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
