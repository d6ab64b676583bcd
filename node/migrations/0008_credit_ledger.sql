-- The credit ledger: every entry that moves an account's balance, as signed by the party
-- whose say-so it is (earnings: the node that carried the traffic, with the client's signed
-- receipt inside; spends: the account or one of its devices; grants: an issuer; devices:
-- the account). A node holds the entries of the accounts it is a replica for.
CREATE TABLE credit_entries (
    id          TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    service     TEXT NOT NULL,
    -- Credits the entry adds to the balance (negative for spends, 0 for device keys).
    amount      BIGINT NOT NULL,
    -- What only grows for an id: bytes carried (earnings) or the signing time (devices).
    progress    BIGINT NOT NULL,
    entry       TEXT NOT NULL,
    signature   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    stored_at   BIGINT NOT NULL
);
CREATE INDEX credit_entries_account ON credit_entries (account, at);

-- Vault sync per vault account and 30-day period: what the free tier is measured against.
CREATE TABLE vault_sync_usage (
    account  TEXT NOT NULL,
    period   BIGINT NOT NULL,
    bytes    BIGINT NOT NULL,
    PRIMARY KEY (account, period)
);
