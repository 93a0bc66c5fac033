"""Whose access just ended, as one value the holders of live access match against (pure).

Signing out ends one main session; "sign out everywhere" all of a user's; a password change
all but the one that made it; a removal or role change the user's access to one workspace;
making a sandbox private the user's access to that one sandbox.
The subdomain proxy (cached access, open proxied streams) and the workspace event streams
each end what a `Revocation` covers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Revocation:
    """A user's access ended: everywhere, or only in one workspace, or only to one sandbox,
    or only for one main session (by its token hash), or for every main session but one."""

    user_id: str
    workspace_id: str | None = None
    session_hash: str | None = None
    keep_session: str | None = None
    sandbox_id: str | None = None

    def covers(
        self,
        user_id: str,
        workspace_id: str,
        session_hash: str | None,
        sandbox_id: str | None = None,
    ) -> bool:
        """True when access of `user_id` to `workspace_id` (to its sandbox `sandbox_id`, if
        the access is to one: a workspace's event stream is not), opened from the main session
        `session_hash` (None: not known), has ended."""
        if user_id != self.user_id:
            return False
        if self.workspace_id is not None and workspace_id != self.workspace_id:
            return False
        if self.sandbox_id is not None and sandbox_id != self.sandbox_id:
            return False
        if self.session_hash is not None and session_hash != self.session_hash:
            return False
        return self.keep_session is None or session_hash != self.keep_session
