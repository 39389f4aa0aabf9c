"""Roles and what they allow: pure rules, no I/O.

A token belongs to one project (or, for a pool admin, to none: pool-wide). Within a project:

* ``viewer`` reads (VMs, their stats and logs, the project's quota, audit and events);
* ``member`` also creates, changes and deletes VMs;
* ``admin`` also manages the project's tokens.

A ``metrics`` token (pool-wide or in a project) reads /metrics and nothing else: the scraper's
credential, which can neither list VMs nor read logs if it leaks from a Prometheus config.

A pool-wide admin can do all of that in every project, and alone manages the pool itself:
projects and their quotas, images, host settings.

A project-scoped token asking about another project is told that nothing is there (404),
exactly as for a project that does not exist, so that one tenant cannot learn another's names.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from virtpool.model.errors import Forbidden, NotFound


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"
    METRICS = "metrics"  # /metrics only: see ``may_scrape``


class Access(IntEnum):
    """What a request needs within a project, weakest first."""

    READ = 1  # look
    OPERATE = 2  # create, change, delete VMs
    MANAGE = 3  # manage the project's tokens


ROLE_ACCESS: dict[Role, Access] = {Role.VIEWER: Access.READ, Role.MEMBER: Access.OPERATE,
                                   Role.ADMIN: Access.MANAGE}
ACCESS_WORDS = {Access.READ: "read", Access.OPERATE: "change VMs", Access.MANAGE: "manage tokens"}


def is_pool_admin(role: str, token_project: str | None) -> bool:
    return token_project is None and role == Role.ADMIN


def project_in_scope(token_project: str | None, asked: str | None, default: str) -> str:
    """The project a request acts in: a scoped token's own, or the one a pool-wide token asks for.

    A scoped token naming another project gets NotFound, worded as for a missing project.
    """
    if token_project is None:
        return asked or default
    if asked is not None and asked != token_project:
        raise not_found_project(asked)
    return token_project


def check_access(token_name: str, role: str, token_project: str | None, needed: Access) -> None:
    """Raise Forbidden unless ``role`` allows ``needed`` in the project the token acts in."""
    granted = ROLE_ACCESS.get(Role(role)) if role in set(Role) else None
    if granted is None or granted < needed:
        where = "pool-wide" if token_project is None else f"in project '{token_project}'"
        raise Forbidden(
            f"token '{token_name}' has the {role} role {where}; to {ACCESS_WORDS[needed]} it "
            f"takes the {minimum_role(needed)} role",
            hint="ask a project admin for a token with that role",
        )


def may_scrape(role: str) -> bool:
    """/metrics takes a metrics token, or one that may read (viewer and up)."""
    return role == Role.METRICS or role in ROLE_ACCESS


def check_not_metrics_only(token_name: str, role: str) -> None:
    """Refuse a metrics token anywhere but /metrics."""
    if role == Role.METRICS:
        raise Forbidden(f"token '{token_name}' is a metrics token: it reads /metrics and nothing else",
                        hint="use a viewer, member or admin token for the API")


def check_pool_admin(token_name: str, role: str, token_project: str | None) -> None:
    if not is_pool_admin(role, token_project):
        raise Forbidden(
            f"token '{token_name}' is not a pool admin; this changes the whole pool",
            hint="use a pool-wide admin token (e.g. the bootstrap token in the data dir)",
        )


def minimum_role(needed: Access) -> Role:
    return next(role for role, access in sorted(ROLE_ACCESS.items(), key=lambda kv: kv[1]) if access >= needed)


def not_found_project(name: str) -> NotFound:
    return NotFound(f"no project named '{name}'", hint="see `virtpool project list`")
