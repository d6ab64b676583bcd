-- Usage receipts: per session, the highest cumulative usage the client's account signed
-- for this node. The signed text and signature are kept, so every total can be audited.
CREATE TABLE usage_receipts (
    session     TEXT PRIMARY KEY,
    account     TEXT NOT NULL,
    client_key  TEXT NOT NULL,
    bytes_up    BIGINT NOT NULL,
    bytes_down  BIGINT NOT NULL,
    seconds     BIGINT NOT NULL,
    receipt     TEXT NOT NULL,
    signature   TEXT NOT NULL,
    first_at    BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX usage_receipts_account ON usage_receipts (account);
