select id, email, first_name, last_name, updated_at from customers
