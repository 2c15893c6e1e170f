CREATE TABLE IF NOT EXISTS "retl_state".retl_meta (sync VARCHAR NOT NULL, target VARCHAR NOT NULL, name VARCHAR NOT NULL, value VARCHAR, PRIMARY KEY (sync, target, name))
