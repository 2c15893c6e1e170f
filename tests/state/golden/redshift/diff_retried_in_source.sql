SELECT DISTINCT CAST("id" AS VARCHAR(MAX)) AS key FROM (select id, email, first_name, score, updated_at from analytics.customers
) AS retl_source WHERE CAST("id" AS VARCHAR(MAX)) IN ('7')
