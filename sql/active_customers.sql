-- Customers the app should know about: active, with an email, not asking to be forgotten.
-- Emails, names and plans are passed on as the warehouse has them; the mapping tidies them.
select
    customer_id,
    account_id,
    email,
    first_name,
    last_name,
    plan,
    country,
    marketing_opt_in,
    last_seen_at,
    updated_at
from analytics.active_customers
