INSERT INTO "retl_state".retl_meta (sync, target, name, value) VALUES ('customers', '0123456789abcdef', 'config_hash', 'c0ffee'), ('customers', '0123456789abcdef', 'watermark', CAST(NULL AS TEXT))
