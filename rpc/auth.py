"""Token authentication for the public and admin APIs.

The tokens file (`BATON_AUTH_TOKENS` / `--auth-tokens`) has one token per line:
`<token> <tenant> <role>` with role `user` or `admin`; `#` starts a comment. A user token binds the
request to its tenant (the cache namespace), whatever the request says, so one tenant's cache never
serves another's prompt. Admin RPCs need an admin token. No file → auth is off and the request's
own `tenant` field is used.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from rpc.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    role: str  # "user" | "admin"


class TokenAuth:
    def __init__(self, tokens: dict[str, Principal]) -> None:
        self._tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    @staticmethod
    def from_file(path: str) -> TokenAuth:
        if not path:
            return TokenAuth({})
        tokens: dict[str, Principal] = {}
        for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ("user", "admin"):
                raise ValueError(f"{path}:{number}: expected '<token> <tenant> <user|admin>'")
            tokens[parts[0]] = Principal(parts[1], parts[2])
        return TokenAuth(tokens)

    def principal(self, metadata) -> Principal | None:
        """The caller, from `authorization: Bearer <token>`; None when auth is off."""
        if not self.enabled:
            return None
        header = dict(metadata or ()).get("authorization", "")
        if not header.startswith("Bearer "):
            raise Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
        offered = header[len("Bearer ") :].strip()
        for token, principal in self._tokens.items():
            if hmac.compare_digest(token, offered):
                return principal
        raise Unauthenticated("invalid token")

    def tenant_for(self, metadata, requested_tenant: str) -> str:
        principal = self.principal(metadata)
        if principal is None:
            return requested_tenant
        if requested_tenant and requested_tenant != principal.tenant:
            raise PermissionDenied(f"the token is bound to another tenant than {requested_tenant!r}")
        return principal.tenant

    def require_admin(self, metadata) -> None:
        principal = self.principal(metadata)
        if principal is not None and principal.role != "admin":
            raise PermissionDenied("admin RPCs need an admin token")
