-- Domains allowed or denied for one peer only (`nx1 guard allow|deny DOMAIN --peer NAME`).
-- They go when the peer goes.
CREATE TABLE guard_peer_rules (
    peer        TEXT NOT NULL REFERENCES peers (name) ON DELETE CASCADE,
    domain      TEXT NOT NULL,
    action      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (peer, domain)
);
