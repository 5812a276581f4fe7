"""Role resolution and the one permission check."""

from __future__ import annotations

import pytest

from storybench_core import access
from storybench_core.access import (
    ACTION_ROLES,
    ACTIONS,
    LOCAL_ADMIN,
    AccessPolicy,
    Principal,
    allowed,
    check_queue_limits,
    cli_principal,
    load_access_policy,
    principal_for,
    require,
)
from storybench_core.errors import ConfigError, PermissionDenied, StorybenchError

SECRETS = {
    "storybench": {
        "access": {
            "admins": ["Ana@Example.com"],
            "operators": ["@example.com", "bo@partner.org"],
        }
    }
}


@pytest.fixture
def policy() -> AccessPolicy:
    return load_access_policy(SECRETS)


@pytest.mark.parametrize(
    ("email", "role"),
    [
        ("ana@example.com", "admin"),  # exact e-mail beats the domain rule
        ("ANA@EXAMPLE.COM", "admin"),  # case-insensitive
        ("cy@example.com", "operator"),  # domain
        ("Cy@Example.Com", "operator"),
        ("bo@partner.org", "operator"),  # exact e-mail
        ("di@partner.org", "viewer"),  # same domain, not listed
        ("eve@notexample.com", "viewer"),  # a domain suffix is not the domain
        ("mallory@example.com.evil.io", "viewer"),
    ],
)
def test_role_resolution(policy: AccessPolicy, email: str, role: str) -> None:
    principal = principal_for(email, "", "oidc", policy)
    assert principal.role == role
    assert principal.id == email.lower()
    assert principal.name == email.lower()  # no name given: the e-mail


def test_default_role_and_defaults() -> None:
    assert load_access_policy({}).role_for("x@y.z") == "viewer"
    assert load_access_policy({"storybench": {}}).default_role == "viewer"
    open_team = load_access_policy({"storybench": {"access": {"default_role": "operator"}}})
    assert principal_for("x@y.z", "X", "header", open_team).role == "operator"


def test_invalid_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"default_role"):
        load_access_policy({"storybench": {"access": {"default_role": "root"}}})
    with pytest.raises(ConfigError, match=r"operators"):
        load_access_policy({"storybench": {"access": {"operators": ["a@@b"]}}})
    with pytest.raises(ConfigError, match=r"admin"):
        load_access_policy({"storybench": {"access": {"admin": ["a@b.c"]}}})  # typo


def test_every_action_has_a_role() -> None:
    assert set(ACTION_ROLES) == set(ACTIONS)


@pytest.mark.parametrize("action", ACTIONS)
def test_require_by_role(action: access.Action) -> None:
    needed = ACTION_ROLES[action]
    for role in access.ROLES:
        who = Principal(id="p@x.y", name="P", role=role, source="oidc")
        ok = access.ROLES.index(role) >= access.ROLES.index(needed)
        assert allowed(who, action) is ok
        if ok:
            require(who, action)
        else:
            with pytest.raises(PermissionDenied) as info:
                require(who, action)
            message = str(info.value)
            assert "p@x.y" in message and f"({role})" in message and needed in message


def test_permission_denied_is_a_storybench_error() -> None:
    assert issubclass(PermissionDenied, StorybenchError)


def test_local_and_cli_principals_are_admins() -> None:
    assert LOCAL_ADMIN.role == "admin" and LOCAL_ADMIN.source == "local"
    cli = cli_principal()
    assert cli.role == "admin" and cli.source == "cli" and cli.id.startswith("cli:")


def test_queue_limits() -> None:
    policy = AccessPolicy(max_queued_evaluations=2, max_queued_tasks=100)
    operator = Principal(id="op@x.y", name="Op", role="operator", source="oidc")
    check_queue_limits(operator, policy, queued_evaluations=1, queued_tasks=50, new_tasks=50)
    with pytest.raises(PermissionDenied, match=r"max_queued_evaluations"):
        check_queue_limits(operator, policy, queued_evaluations=2, queued_tasks=0, new_tasks=1)
    with pytest.raises(PermissionDenied, match=r"max_queued_tasks"):
        check_queue_limits(operator, policy, queued_evaluations=0, queued_tasks=60, new_tasks=41)
    check_queue_limits(LOCAL_ADMIN, policy, queued_evaluations=9, queued_tasks=999, new_tasks=999)
    unlimited = AccessPolicy(max_queued_evaluations=0, max_queued_tasks=0)
    check_queue_limits(operator, unlimited, queued_evaluations=99, queued_tasks=9999, new_tasks=9)
