CREATE TEMPORARY TABLE IF NOT EXISTS retl_ack_stage (key STRING, `hash` STRING, dest_id STRING, deleted BOOL)
