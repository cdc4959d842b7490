"""TLS settings of servers and channels (router and workers alike), read from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: str = ""
    key: str = ""
    ca: str = ""  # set → peers are verified against it, and clients dial with TLS
    # With a CA: servers also demand a client certificate signed by it (mutual TLS). Off
    # (BATON_TLS_CLIENT_AUTH=0): server-only TLS, clients still verify the server against the CA.
    client_auth: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)

    @property
    def mutual(self) -> bool:
        return self.enabled and bool(self.ca) and self.client_auth

    @staticmethod
    def from_env() -> TlsConfig:
        return TlsConfig(
            cert=os.environ.get("BATON_TLS_CERT", ""),
            key=os.environ.get("BATON_TLS_KEY", ""),
            ca=os.environ.get("BATON_TLS_CA", ""),
            client_auth=os.environ.get("BATON_TLS_CLIENT_AUTH", "1").lower() not in ("0", "false", "no"),
        )
