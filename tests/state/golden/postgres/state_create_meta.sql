CREATE TABLE IF NOT EXISTS "retl_state".retl_meta (sync TEXT NOT NULL, target TEXT NOT NULL, name TEXT NOT NULL, value TEXT, PRIMARY KEY (sync, target, name))
