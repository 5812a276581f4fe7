"""Who may do what: principals, roles, the access policy and the one check.

Roles are ordered viewer < operator < admin. A viewer reads, exports and votes; an
operator also configures, queues, stops, resumes and resets runs and judge jobs and
downloads models; an admin also deletes or archives evaluations, deletes models and
sees the access list. Every state-changing core function calls `require`, so a
forged request is refused in the core, not merely hidden in a page.

The policy comes from `.streamlit/secrets.toml`:

    [storybench.access]
    admins = ["ana@example.com"]
    operators = ["@example.com", "bo@partner.org"]   # an e-mail, or "@domain" for all of it
    default_role = "viewer"                          # everyone else who signed in
    max_queued_evaluations = 5                       # per operator; 0 = no limit
    max_queued_tasks = 1000                          # per operator, summed over queued work
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, PermissionDenied

Role = Literal["viewer", "operator", "admin"]
Source = Literal["oidc", "header", "cli", "local"]
Action = Literal[
    "queue",
    "stop",
    "resume",
    "reset",
    "judge",
    "delete",
    "archive",
    "download_model",
    "delete_model",
    "save_config",
    "vote",
    "view_access",
]

ROLES: tuple[Role, ...] = get_args(Role)
ACTIONS: tuple[Action, ...] = get_args(Action)
_RANK: dict[Role, int] = {role: rank for rank, role in enumerate(ROLES)}

# The least role each action needs.
ACTION_ROLES: dict[Action, Role] = {
    "vote": "viewer",
    "queue": "operator",
    "stop": "operator",
    "resume": "operator",
    "reset": "operator",
    "judge": "operator",
    "download_model": "operator",
    "save_config": "operator",
    "delete": "admin",
    "archive": "admin",
    "delete_model": "admin",
    "view_access": "admin",
}

# How an action reads in a sentence ("may not stop a run").
ACTION_PHRASES: dict[Action, str] = {
    "queue": "queue a run",
    "stop": "stop a run",
    "resume": "resume a run",
    "reset": "reset a run",
    "judge": "queue a judge job",
    "delete": "delete an evaluation",
    "archive": "archive an evaluation",
    "download_model": "download a model",
    "delete_model": "delete a model",
    "save_config": "save a config",
    "vote": "vote",
    "view_access": "see the access list",
}


@dataclass(frozen=True)
class Principal:
    """The one acting: a signed-in person, the server's CLI user, or the single local user."""

    id: str  # e-mail (lower-case), "cli:<os user>" or "local"
    name: str
    role: Role
    source: Source

    def describe(self) -> str:
        return f"{self.id} ({self.role})"


LOCAL_ADMIN = Principal(id="local", name="local user", role="admin", source="local")


def cli_principal() -> Principal:
    """Whoever runs the CLI on the server has a shell there, so acts as admin (and is recorded)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = os.environ.get("USER") or str(os.getuid())
    return Principal(id=f"cli:{user}", name=user, role="admin", source="cli")


class AccessPolicy(BaseModel):
    """The `[storybench.access]` section: who is an operator or admin, and operators' limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operators: list[str] = Field(default_factory=list)
    admins: list[str] = Field(default_factory=list)
    default_role: Role = "viewer"
    max_queued_evaluations: int = Field(default=5, ge=0)
    max_queued_tasks: int = Field(default=1000, ge=0)

    @field_validator("operators", "admins")
    @classmethod
    def _normalize(cls, entries: list[str]) -> list[str]:
        cleaned = [entry.strip().lower() for entry in entries]
        for entry in cleaned:
            if not entry or entry == "@" or entry.count("@") > 1 or entry.endswith("@"):
                raise ValueError(f"{entry!r} is neither an e-mail nor '@domain.com'")
        return cleaned

    def role_for(self, email: str) -> Role:
        """Admins first, then operators (e-mail or @domain, case-insensitive), else the default."""
        email = email.strip().lower()
        if _matches(email, self.admins):
            return "admin"
        if _matches(email, self.operators):
            return "operator"
        return self.default_role


def _matches(email: str, entries: list[str]) -> bool:
    for entry in entries:
        if entry.startswith("@"):
            if email.endswith(entry) and len(email) > len(entry):
                return True
        elif email == entry:
            return True
    return False


def load_access_policy(secrets: Mapping[str, Any]) -> AccessPolicy:
    """The policy from a whole secrets mapping (its `[storybench.access]` section; defaults if absent)."""
    section = (secrets.get("storybench") or {}).get("access") or {}
    try:
        return AccessPolicy.model_validate(dict(section))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'section'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"[storybench.access] in .streamlit/secrets.toml is invalid: {problems}") from exc


def current_policy() -> AccessPolicy:
    """The policy from `.streamlit/secrets.toml` in the working directory."""
    from .credentials import read_secrets

    return load_access_policy(read_secrets())


def principal_for(email: str, name: str, source: Source, policy: AccessPolicy) -> Principal:
    """The principal of a signed-in person, with the role the policy gives their e-mail."""
    ident = email.strip().lower()
    return Principal(id=ident, name=name or ident, role=policy.role_for(ident), source=source)


def allowed(principal: Principal, action: Action) -> bool:
    """Whether the principal's role reaches what the action needs (pages hide controls by it)."""
    return _RANK.get(principal.role, -1) >= _RANK[ACTION_ROLES[action]]  # an unknown role: nothing


def require(principal: Principal, action: Action) -> None:
    """Raise PermissionDenied unless the principal may do the action."""
    if not allowed(principal, action):
        needed = ACTION_ROLES[action]
        raise PermissionDenied(
            f"{principal.id} ({principal.role}) may not {ACTION_PHRASES[action]}: "
            f"'{action}' needs the {needed} role. Ask an admin to list you under "
            f"{needed}s in [storybench.access] (.streamlit/secrets.toml)."
        )


def check_queue_limits(
    principal: Principal,
    policy: AccessPolicy,
    *,
    queued_evaluations: int,
    queued_tasks: int,
    new_tasks: int,
) -> None:
    """Refuse an operator's new work past the policy's limits (admins have none; 0 = no limit)."""
    if principal.role == "admin":
        return
    limit = policy.max_queued_evaluations
    if limit and queued_evaluations + 1 > limit:
        raise PermissionDenied(
            f"{principal.id} already has {queued_evaluations} queued or running evaluation(s), "
            f"the limit is {limit} (max_queued_evaluations in [storybench.access]). "
            "Wait for one to finish or stop one."
        )
    limit = policy.max_queued_tasks
    if limit and queued_tasks + new_tasks > limit:
        raise PermissionDenied(
            f"{principal.id} would have {queued_tasks + new_tasks} queued task(s) "
            f"({queued_tasks} waiting + {new_tasks} new), the limit is {limit} "
            "(max_queued_tasks in [storybench.access]). Queue fewer models, sequences or runs."
        )


__all__ = [
    "ACTIONS",
    "ACTION_ROLES",
    "LOCAL_ADMIN",
    "ROLES",
    "AccessPolicy",
    "Action",
    "PermissionDenied",
    "Principal",
    "Role",
    "Source",
    "allowed",
    "check_queue_limits",
    "cli_principal",
    "current_policy",
    "load_access_policy",
    "principal_for",
    "require",
]
