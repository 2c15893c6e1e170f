WITH keys AS (SELECT CAST("id" AS VARCHAR) AS __retl_key FROM (select id, email, first_name, score, updated_at from analytics.customers
) AS retl_source) SELECT __retl_key AS key, COUNT(*) AS n FROM keys GROUP BY __retl_key HAVING __retl_key IS NULL OR COUNT(*) > 1
