WITH snap AS (SELECT key, hash, dest_id FROM `retl_state`.retl_snapshot WHERE sync = 'customers' AND target = '0123456789abcdef'), keys AS (SELECT CAST(`id` AS STRING) AS k FROM (select id, email, first_name, score, updated_at from analytics.customers
) AS retl_source) SELECT s.key AS key, s.dest_id AS dest_id FROM snap AS s WHERE NOT EXISTS(SELECT 1 FROM keys WHERE keys.k = s.key)
