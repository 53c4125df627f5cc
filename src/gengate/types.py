"""Value objects shared across gengate: who is calling, and what a call cost."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller, whatever the credential (virtual key or JWT).

    `token` is the original bearer credential, kept only so later stages can pass the caller's identity on to
    backends; it is never logged or stored.
    """

    subject: str
    team: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    key_id: str | None = None
    auth: str = "key"  # "key" | "jwt" | "admin"
    # Granted only by an admin key or a JWT role listed in `auth.admin_roles`; never inferred from a role name.
    admin: bool = False
    claims: dict[str, object] = field(default_factory=dict, compare=False, hash=False)
    token: str = field(default="", repr=False, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        """True for the admin plane's credentials (an admin key or a configured admin role)."""
        return self.admin


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by (or estimated for) one call."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens
