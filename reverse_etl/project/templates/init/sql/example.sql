-- An inline table, so the example runs without a warehouse. Replace it with a query on yours,
-- e.g.  select id, email, first_name, last_name, plan from analytics.customers
select *
from (
    values
        (1, 'ada@example.com', 'Ada', 'Lovelace', 'pro'),
        (2, 'Grace@Example.com ', 'Grace', 'Hopper', 'enterprise'),
        (3, 'alan@example.com', 'Alan', 'Turing', 'free')
) as customers (id, email, first_name, last_name, plan)
