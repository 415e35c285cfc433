"""How to reach the store: the settings the CLI/config layer builds and the source obeys."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StorageOptions:
    """How to reach the store; built by the CLI/config layer."""

    endpoint_url: str | None = None
    region: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    profile: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    anonymous: bool = False
    timeout: float = 30.0
    retries: int = 4

    def __repr__(self) -> str:  # never print secrets
        return (
            f"StorageOptions(endpoint_url={self.endpoint_url!r}, region={self.region!r}, "
            f"ca_bundle={self.ca_bundle!r}, verify_tls={self.verify_tls}, profile={self.profile!r}, "
            f"anonymous={self.anonymous}, timeout={self.timeout}, retries={self.retries})"
        )
