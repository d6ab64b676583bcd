-- The password vault's server side. Everything here is either public by design (salt, KDF
-- parameters, public keys) or ciphertext sealed on a device; ids are opaque hashes/randoms.

-- One row per account: what login and manifest checks need, and the head of its history.
CREATE TABLE vault_accounts (
    id            TEXT PRIMARY KEY,
    salt          BYTEA NOT NULL,
    kdf_m_kib     BIGINT NOT NULL,
    kdf_t         BIGINT NOT NULL,
    kdf_p         BIGINT NOT NULL,
    auth_key      BYTEA NOT NULL,
    manifest_key  BYTEA NOT NULL,
    wrapped_key   BYTEA NOT NULL,
    head_seq      BIGINT NOT NULL DEFAULT 0,
    item_count    BIGINT NOT NULL DEFAULT 0,
    bytes_used    BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);

-- The newest version of each item (tombstones included). `seq` is the change that wrote it:
-- the pull cursor.
CREATE TABLE vault_items (
    account   TEXT NOT NULL REFERENCES vault_accounts (id) ON DELETE CASCADE,
    id        TEXT NOT NULL,
    version   BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    deleted   BIGINT NOT NULL,
    item_key  BYTEA NOT NULL,
    body      BYTEA NOT NULL,
    size      BIGINT NOT NULL,
    PRIMARY KEY (account, id)
);
CREATE INDEX vault_items_by_seq ON vault_items (account, seq);

-- Every signed manifest, by change number: the hash chain clients check.
CREATE TABLE vault_manifests (
    account   TEXT NOT NULL REFERENCES vault_accounts (id) ON DELETE CASCADE,
    seq       BIGINT NOT NULL,
    manifest  TEXT NOT NULL,
    PRIMARY KEY (account, seq)
);

-- Logged-in sessions: the SHA-256 of the bearer token, never the token.
CREATE TABLE vault_sessions (
    token_hash  TEXT PRIMARY KEY,
    account     TEXT NOT NULL REFERENCES vault_accounts (id) ON DELETE CASCADE,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX vault_sessions_by_expiry ON vault_sessions (expires_at);
