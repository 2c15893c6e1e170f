SELECT name, value FROM `retl_state`.retl_meta WHERE sync = 'customers' AND target = '0123456789abcdef'
