"""Who may run SQL through a warehouse: its `roles` in retl.yml against `--role`/`RETL_ROLE`."""

from __future__ import annotations

from reverse_etl.errors import RoleRefusedError


def check_role(warehouse_name: str, roles: list[str] | None, current_role: str | None) -> None:
    """Refuse with `RoleRefusedError` unless `roles` is unset or lists `current_role` exactly.

    An empty `roles` list allows no one; a blank current role counts as none given.
    """
    if roles is None:
        return
    role = (current_role or "").strip()
    if role and role in roles:
        return
    allowed = ", ".join(f"'{r}'" for r in roles)
    if not roles:
        message = f"warehouse '{warehouse_name}' lists no roles, so no role may use it"
        hint = f"add the roles that may use it to warehouses.{warehouse_name}.roles in retl.yml"
    elif role:
        message = (
            f"role '{role}' may not use warehouse '{warehouse_name}'; allowed roles: {allowed}"
        )
        hint = "run with --role ROLE or set RETL_ROLE to one of the allowed roles"
    else:
        message = (
            f"warehouse '{warehouse_name}' may only be used by roles {allowed}, "
            "and no role was given"
        )
        hint = "run with --role ROLE or set RETL_ROLE to one of the allowed roles"
    raise RoleRefusedError(message, hint=hint)
