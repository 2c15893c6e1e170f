"""Warehouse roles: only the roles a warehouse lists may run SQL through it."""

from __future__ import annotations

import pytest

from reverse_etl.errors import RoleRefusedError
from reverse_etl.warehouse import check_role


def test_warehouse_without_roles_admits_everyone() -> None:
    check_role("analytics", None, None)
    check_role("analytics", None, "intern")


def test_listed_role_is_admitted() -> None:
    check_role("analytics", ["analyst", "ops"], "ops")


def test_unlisted_role_is_refused_with_the_allowed_roles() -> None:
    with pytest.raises(RoleRefusedError) as caught:
        check_role("analytics", ["analyst", "ops"], "intern")
    assert caught.value.message == (
        "role 'intern' may not use warehouse 'analytics'; allowed roles: 'analyst', 'ops'"
    )
    assert "--role" in (caught.value.hint or "") and "RETL_ROLE" in (caught.value.hint or "")
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("role", [None, "", "  "])
def test_missing_role_is_refused_and_says_none_was_given(role: str | None) -> None:
    with pytest.raises(RoleRefusedError) as caught:
        check_role("analytics", ["analyst"], role)
    assert caught.value.message == (
        "warehouse 'analytics' may only be used by roles 'analyst', and no role was given"
    )
    assert "--role" in (caught.value.hint or "")


def test_roles_match_exactly() -> None:
    with pytest.raises(RoleRefusedError):
        check_role("analytics", ["analyst"], "Analyst")


def test_empty_roles_list_admits_no_one() -> None:
    with pytest.raises(RoleRefusedError, match="lists no roles"):
        check_role("analytics", [], "analyst")
