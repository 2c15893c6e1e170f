SELECT DISTINCT CAST("id" AS TEXT) AS key FROM (select id, email, first_name, score, updated_at from analytics.customers
) AS retl_source WHERE CAST("id" AS TEXT) IN ('7')
