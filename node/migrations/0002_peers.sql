-- WireGuard clients registered with `nx1 peer add`: public key and the tunnel addresses
-- allocated to them. Private keys are never stored.
CREATE TABLE peers (
    name        TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL UNIQUE,
    ipv4        TEXT NOT NULL UNIQUE,
    ipv6        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);
