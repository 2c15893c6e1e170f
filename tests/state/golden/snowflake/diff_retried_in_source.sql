SELECT DISTINCT CAST("id" AS VARCHAR) AS key FROM (select id, email, first_name, score, updated_at from analytics.customers
) AS retl_source WHERE CAST("id" AS VARCHAR) IN ('7')
