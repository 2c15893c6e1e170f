CREATE TEMPORARY TABLE IF NOT EXISTS retl_ack_stage (key TEXT, hash TEXT, dest_id TEXT, deleted BOOLEAN)
