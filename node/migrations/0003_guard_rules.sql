-- Domains the node owner allowed or denied with `nx1 guard allow|deny`, on top of the lists.
CREATE TABLE guard_rules (
    domain      TEXT PRIMARY KEY,
    action      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
