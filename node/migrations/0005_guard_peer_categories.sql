-- Guard categories one peer turned off for itself (`nx1 guard disable CATEGORY --peer NAME`):
-- a block list by name, or a detector (dga, phishing, tunnelling, rebinding).
-- They go when the peer goes.
CREATE TABLE guard_peer_categories (
    peer        TEXT NOT NULL REFERENCES peers (name) ON DELETE CASCADE,
    category    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (peer, category)
);
