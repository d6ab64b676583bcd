-- Facts about the node that owns this database (its id, the software version that last ran).
-- Written in the SQL that SQLite and PostgreSQL share: both run these same migrations.
CREATE TABLE node_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
