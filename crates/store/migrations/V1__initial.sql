-- kurir's first schema: accounts and their keys, users, the two kinds of
-- deliverable work (messages, status updates) and every delivery attempt.
--
-- messages and status_updates share one shape for the pipeline:
--   state, attempts     the state machine; attempts also fences stale writers
--   due_at              when the row may next be delivered (retries wait here)
--   published           a broker copy exists for the current attempt
--   publish_lease_until someone (the API or a relay) is publishing it now
--   lease_until         a worker is delivering it now (state 'sending')

CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_name_key UNIQUE (name)
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash)
);

CREATE TABLE users (
    account_id     bigint NOT NULL REFERENCES accounts (id),
    id             text NOT NULL,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    name           text NOT NULL,
    phone_number   text NOT NULL,
    profile_image  text,
    status         text NOT NULL DEFAULT '',
    -- created_at of the status update whose text `status` holds, so that
    -- updates finishing out of order never put an older text back
    status_set_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT users_phone_number_key UNIQUE (account_id, phone_number)
);
-- the list endpoint pages by (account_id, seq)
CREATE UNIQUE INDEX users_account_seq_idx ON users (account_id, seq);

CREATE TABLE messages (
    id                   uuid PRIMARY KEY,
    account_id           bigint NOT NULL,
    user_id              text NOT NULL,
    body                 text NOT NULL,
    state                text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'read', 'failed')),
    attempts             integer NOT NULL DEFAULT 0,
    due_at               timestamptz NOT NULL DEFAULT now(),
    published            boolean NOT NULL DEFAULT false,
    publish_lease_until  timestamptz,
    lease_until          timestamptz,
    last_error           jsonb,
    provider_message_id  text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    delivered_at         timestamptz,
    read_at              timestamptz,
    failed_at            timestamptz,
    CONSTRAINT messages_user_fkey FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id)
);
-- GET /v1/users/{id}/messages, newest first (ids are UUIDv7, so time-ordered)
CREATE INDEX messages_user_idx ON messages (account_id, user_id, id DESC);
-- the relay's scan: only unpublished queued rows, so it stays small at any table size
CREATE INDEX messages_relay_idx ON messages (due_at) WHERE state = 'queued' AND NOT published;
-- expired worker leases (a worker died mid-delivery)
CREATE INDEX messages_lease_idx ON messages (lease_until) WHERE state = 'sending';

CREATE TABLE status_updates (
    id                   uuid PRIMARY KEY,
    account_id           bigint NOT NULL,
    user_id              text NOT NULL,
    status               text NOT NULL,
    state                text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'sending', 'success', 'failed')),
    attempts             integer NOT NULL DEFAULT 0,
    due_at               timestamptz NOT NULL DEFAULT now(),
    published            boolean NOT NULL DEFAULT false,
    publish_lease_until  timestamptz,
    lease_until          timestamptz,
    last_error           jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz,
    CONSTRAINT status_updates_user_fkey FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id)
);
CREATE INDEX status_updates_user_idx ON status_updates (account_id, user_id, id DESC);
CREATE INDEX status_updates_relay_idx ON status_updates (due_at) WHERE state = 'queued' AND NOT published;
CREATE INDEX status_updates_lease_idx ON status_updates (lease_until) WHERE state = 'sending';

CREATE TABLE delivery_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind          text NOT NULL CHECK (kind IN ('message', 'status_update')),
    subject_id    uuid NOT NULL,
    account_id    bigint NOT NULL,
    attempt       integer NOT NULL,
    provider      text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('delivered', 'retryable', 'permanent')),
    http_status   integer,
    error_code    text,
    error_detail  text,
    latency_ms    integer NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now()
);
-- one row per attempt: a record repeated after a lost reply is a no-op
CREATE UNIQUE INDEX delivery_attempts_subject_idx ON delivery_attempts (subject_id, attempt);
