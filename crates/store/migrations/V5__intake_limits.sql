-- The per-account intake limit (README, "Intake limit"): a token bucket on
-- accepted messages, shared by every API process.
--
-- An account's own limit, when an operator set one (`kurir accounts limit`);
-- NULL takes the API's KURIR_INTAKE_RATE / KURIR_INTAKE_BURST. A rate of 0
-- means no limit for that account.
ALTER TABLE accounts
    ADD COLUMN intake_rate integer CHECK (intake_rate >= 0),
    ADD COLUMN intake_burst integer CHECK (intake_burst >= 1);

-- One bucket per limited account. API processes lease tokens from it in
-- chunks (kurir_store::limits::lease), one small UPDATE per chunk; a row
-- appears with an account's first lease.
--   tokens       what the bucket held at refilled_at (refills at the rate, up to the burst)
--   refilled_at  when tokens was last brought up to date
--   granted      what the last lease took (what the lease statement returns)
CREATE TABLE intake_buckets (
    account_id   bigint PRIMARY KEY REFERENCES accounts (id),
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL,
    granted      bigint NOT NULL
);
