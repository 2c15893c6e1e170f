-- Usage-based health per live account, computed in the warehouse (analytics.account_health).
select
    account_id,
    health_score,
    health_tier,
    active_users_30d,
    last_activity_at
from analytics.account_health
