"""Which endpoint an API model may reach, and which key (if any) it may carry there.

The rules (credentials.py has the allowlist's format):
- a preset's key goes only to the preset's own base_url; a replaced base_url drops it;
- any other endpoint gets a key only when the operator's allowlist binds one to it;
- a config's `api_key_env` must name the key bound to its endpoint, else it is refused;
- the hub token and the store URI are never keys;
- an endpoint nobody listed must resolve to public addresses only (every address is
  checked): loopback, private, link-local (cloud metadata) and reserved ones are refused.

Enforced where the worker builds the backend (`OpenAIBackend`), and again for every
request by the HTTP transport (api_http.py), which connects to the checked address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import credentials
from ..config import ModelSpec
from ..errors import ApiError, AuthError, ConfigError
from .presets import get_preset, preset_for_url

# Sent to servers that want no key: the client library insists on some value.
NO_KEY = "not-needed"


class HostNotFound(ApiError):
    """The endpoint's host name does not resolve (now): a connection error, retried like one."""


@dataclass(frozen=True)
class EndpointAccess:
    """What one API model may do: its endpoint, the key variable bound to it, where it may connect."""

    name: str
    base_url: str
    key_env: str | None
    needs_key: bool
    # URL prefixes under which private addresses are allowed (allowlisted, or a local preset's own URL).
    private_prefixes: tuple[str, ...]
    label: str = ""
    hint: str = ""

    def allows_private(self, url: str) -> bool:
        return any(credentials.url_under(url, p) for p in self.private_prefixes)


def endpoint_access(spec: ModelSpec) -> EndpointAccess:
    """The binding for spec's endpoint; ConfigError/AuthError when the config asks for more."""
    name = spec.display_name
    if not spec.base_url:
        raise ApiError(f"model '{name}': an API model needs base_url")
    base_url = spec.base_url.rstrip("/")
    preset = get_preset(spec.preset) if spec.preset else preset_for_url(base_url)
    own_url = preset is not None and (
        credentials.normalize_url(base_url) == credentials.normalize_url(preset.base_url)
    )
    rule = credentials.rule_for(base_url)
    private: list[str] = [rule.prefix] if rule else []
    if rule is not None:
        key_env, needs_key = rule.key_env, bool(rule.key_env)
    elif own_url and preset is not None:
        key_env, needs_key = preset.api_key_env, preset.needs_key
    else:
        key_env, needs_key = None, False
    if own_url and preset is not None and not preset.needs_key and credentials.local_presets_allowed():
        private.append(credentials.normalize_url(preset.base_url))
    if spec.api_key_env and spec.api_key_env != key_env:
        bound = f"the key bound to it is ${key_env}" if key_env else "no key is bound to it"
        raise AuthError(
            f"model '{name}': api_key_env {spec.api_key_env} is not allowed for {base_url} ({bound}). "
            "A preset's key goes only to the preset's own base_url; for another endpoint the operator "
            f"binds a key in {credentials.ENDPOINTS_TABLE} of {credentials.SECRETS_FILE} "
            f"(or ${credentials.ENDPOINTS_ENV}); remove api_key_env or ask for the binding"
        )
    if key_env in credentials.RESERVED_NAMES:  # defence in depth: presets never name these
        raise ConfigError(f"model '{name}': {key_env} is never sent to an API endpoint")
    return EndpointAccess(
        name=name,
        base_url=base_url,
        key_env=key_env,
        needs_key=needs_key,
        private_prefixes=tuple(private),
        label=preset.label if own_url and preset else "",
        hint=preset.notes if own_url and preset and not preset.needs_key else "",
    )


def api_key(access: EndpointAccess) -> str:
    """The bound key's value, NO_KEY when none is bound, AuthError when a needed key is missing."""
    value = credentials.api_key_value(access.key_env) if access.key_env else None
    if value:
        return value
    if access.needs_key:
        where = access.base_url + (f" ({access.label})" if access.label else "")
        raise AuthError(
            f"model '{access.name}' needs an API key for {where}: set the environment variable "
            f'{access.key_env} (or add {access.key_env} = "..." under [api_keys] in '
            f"{credentials.SECRETS_FILE}) and try again"
        )
    return NO_KEY


def key_status(spec: ModelSpec) -> str:
    """For the Configure page: 'OPENAI_API_KEY: set' / ': not set' / 'no key needed' — never the key."""
    try:
        access = endpoint_access(spec)
    except AuthError:  # api_key_env names a key not bound here: say so, not whether it is set
        return f"{spec.api_key_env}: not allowed for this endpoint"
    if not access.key_env:
        return "no key needed"
    state = "set" if credentials.api_key_value(access.key_env) else "not set"
    return f"{access.key_env}: {state}"


# --- where a request may connect ---------------------------------------------------------


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped and 6to4 forms unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    """Every address host resolves to (an IP literal resolves to itself)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"cannot resolve the host '{host}' ({exc}); check base_url") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_addresses(url: str, access: EndpointAccess) -> list[str]:
    """The addresses url's host resolves to, every one of them allowed; ApiError otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise HostNotFound(f"model '{access.name}': the host '{host}' has no address")
    if access.allows_private(url):
        return addresses
    refused = [a for a in addresses if not is_public(a)]
    if refused:
        raise ApiError(
            f"model '{access.name}': {credentials.normalize_url(url)} resolves to a private, loopback, "
            f"link-local or reserved address ({', '.join(refused)}), which API models may not reach "
            f"unless the operator lists the endpoint in {credentials.ENDPOINTS_TABLE} of "
            f"{credentials.SECRETS_FILE} (or ${credentials.ENDPOINTS_ENV})"
        )
    return addresses
