"""The role rules, without a server: which role may do what, and where a token acts."""

from __future__ import annotations

import pytest

from virtpool.model.errors import Forbidden, NotFound
from virtpool.model.roles import (
    Access,
    Role,
    check_access,
    check_pool_admin,
    is_pool_admin,
    minimum_role,
    project_in_scope,
)

ALLOWED = {
    Role.VIEWER: {Access.READ},
    Role.MEMBER: {Access.READ, Access.OPERATE},
    Role.ADMIN: {Access.READ, Access.OPERATE, Access.MANAGE},
    Role.METRICS: set(),  # /metrics only, which is not an Access within a project
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("needed", list(Access))
def test_each_role_allows_exactly_its_access(role: Role, needed: Access) -> None:
    if needed in ALLOWED[role]:
        check_access("t", role, "a", needed)
    else:
        with pytest.raises(Forbidden) as refused:
            check_access("t", role, "a", needed)
        assert f"token 't' has the {role} role in project 'a'" in refused.value.message
        assert f"takes the {minimum_role(needed)} role" in refused.value.message


def test_unknown_role_is_refused_everything() -> None:
    with pytest.raises(Forbidden):
        check_access("legacy", "user", None, Access.READ)


def test_minimum_roles() -> None:
    assert [minimum_role(a) for a in Access] == [Role.VIEWER, Role.MEMBER, Role.ADMIN]


def test_only_a_pool_wide_admin_is_a_pool_admin() -> None:
    assert is_pool_admin("admin", None)
    assert not is_pool_admin("admin", "a")
    assert not is_pool_admin("member", None)
    check_pool_admin("root", "admin", None)
    for role, project in (("admin", "a"), ("member", "a"), ("viewer", "a")):
        with pytest.raises(Forbidden) as refused:
            check_pool_admin("t", role, project)
        assert "not a pool admin" in refused.value.message


def test_a_project_token_acts_in_its_own_project() -> None:
    assert project_in_scope("a", None, "default") == "a"
    assert project_in_scope("a", "a", "default") == "a"


def test_another_project_is_not_found_like_a_missing_one() -> None:
    with pytest.raises(NotFound) as other:
        project_in_scope("a", "b", "default")
    with pytest.raises(NotFound) as missing:
        project_in_scope("a", "nosuch", "default")
    assert other.value.message.replace("'b'", "X") == missing.value.message.replace("'nosuch'", "X")
    assert other.value.hint == missing.value.hint


def test_a_pool_wide_token_picks_any_project_default_first() -> None:
    assert project_in_scope(None, None, "default") == "default"
    assert project_in_scope(None, "b", "default") == "b"
