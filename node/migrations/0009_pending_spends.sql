-- A spend a replica took but whose majority is not known yet: it holds the credits until
-- then (NULL: decided). One that is never confirmed gives them back when this time passes.
ALTER TABLE credit_entries ADD COLUMN pending_until BIGINT;
