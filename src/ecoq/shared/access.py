"""Who is asking: the caller's uid from the kernel, and whether `shared.admins` names them.

The uid and gid come from the connected socket's peer credentials (SO_PEERCRED), which the
kernel records when the client connects; nothing the client sends can change them. Group
membership for `@group` admins is read from the group database (`getgrouplist`), as `login`
computes it, not from anything the client claims.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from ecoq.errors import ConfigError

__all__ = ["Admins", "Caller", "identify", "peer_credentials"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Caller:
    """A connected user: `user` is the account name ("uid N" when the uid has none)."""

    pid: int
    uid: int
    gid: int
    user: str
    admin: bool

    @property
    def label(self) -> str:
        return f"{self.user} (uid {self.uid})"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket (Linux)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid


class Admins:
    """The `shared.admins` setting: user names, numeric uids and @groups, comma-separated.

    Root is always an admin. Names are checked when the setting is read, so a typo fails the
    daemon's start instead of silently granting nothing.
    """

    def __init__(self, setting: str) -> None:
        self.uids: set[int] = {0}
        self.gids: dict[int, str] = {}
        for raw in setting.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry.startswith("@"):
                self.gids[self._group(entry)] = entry[1:]
            elif entry.isdigit():
                self.uids.add(int(entry))
            else:
                try:
                    self.uids.add(pwd.getpwnam(entry).pw_uid)
                except KeyError:
                    raise ConfigError(
                        f"shared.admins names user {entry!r}, which has no account here "
                        f"(`getent passwd {entry}` finds none); fix the name or remove it"
                    ) from None

    @staticmethod
    def _group(entry: str) -> int:
        name = entry[1:].strip()
        if not name:
            raise ConfigError(
                "shared.admins has an empty group ('@'); write @GROUP, e.g. @ecoq-admins"
            )
        if name.isdigit():
            return int(name)
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            raise ConfigError(
                f"shared.admins names group @{name}, which does not exist "
                f"(`getent group {name}` finds none); create it or fix the name"
            ) from None

    def is_admin(self, uid: int, gid: int) -> bool:
        """Whether `uid` (whose process runs with primary group `gid`) is an admin."""
        if uid in self.uids:
            return True
        if not self.gids:
            return False
        groups = {gid}
        try:
            entry = pwd.getpwuid(uid)
            groups.update(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except KeyError:
            pass
        return not groups.isdisjoint(self.gids)


def identify(pid: int, uid: int, gid: int, admins: Admins) -> Caller:
    """The `Caller` for peer credentials (pid, uid, gid)."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    return Caller(pid=pid, uid=uid, gid=gid, user=user, admin=admins.is_admin(uid, gid))
