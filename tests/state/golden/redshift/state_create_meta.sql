CREATE TABLE IF NOT EXISTS "retl_state".retl_meta (sync VARCHAR(MAX) NOT NULL, target VARCHAR(MAX) NOT NULL, name VARCHAR(MAX) NOT NULL, value VARCHAR(MAX), PRIMARY KEY (sync, target, name))
