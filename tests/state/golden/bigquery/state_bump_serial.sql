UPDATE `retl_state`.retl_meta SET value = CAST(CAST(value AS INT64) + 1 AS STRING) WHERE sync = 'customers' AND target = '0123456789abcdef' AND name = 'serial'
