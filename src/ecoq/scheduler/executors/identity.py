"""Whom a job runs as: its submitter, resolved from the user database when it is launched.

A daemon running as root starts each job as the user who submitted it: that user's uid, their
primary group (or the group the launch names) and their supplementary groups from the group
database (`getgrouplist`, as `login` and `su -` compute them), never the daemon's. On a shared
box (`RunAs`) this is mandatory: a job whose owner is unknown, or is root, is refused rather than
run as root. Stdlib only: the wrapper imports `Identity`.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecoq.errors import ExecutorError

__all__ = ["Identity", "RunAs", "lookup", "make_traversable", "resolve"]


@dataclass(frozen=True)
class Identity:
    """A user to run a job as: `groups` are all of its groups (the primary one included)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "groups": list(self.groups), "user": self.user}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identity:
        """Parse `to_json`'s output. Raises ValueError when a field is missing or mistyped."""
        uid, gid, groups, user = data["uid"], data["gid"], data["groups"], data["user"]
        ints = [uid, gid, *groups] if isinstance(groups, list) else None
        if ints is None or not all(type(i) is int and i >= 0 for i in ints):
            raise ValueError("run_as needs non-negative integer uid, gid and groups")
        if not isinstance(user, str):
            raise ValueError("run_as.user is not a string")
        return cls(uid, gid, tuple(groups), user)


@dataclass(frozen=True)
class RunAs:
    """The shared-box policy of a `LocalExecutor`: every job runs as its submitter.

    `owner_uid(job_id)` gives the submitter of a job whose `LaunchSpec` carries no `uid` (the
    daemon reads it from the job); `allow_root` lets jobs submitted by root run as root
    (`shared.allow_root_jobs`); the folders from `data_dir` down to each run directory are made
    traversable (0711, not listable) so the job can reach its own `output.log` and
    `marks.jsonl`, which are owned by the job's user; every other record stays root's, 0600.
    """

    owner_uid: Callable[[int], int | None] | None = None
    allow_root: bool = False
    data_dir: Path | None = None


def lookup(uid: int, gid: int | None = None) -> Identity:
    """The identity of `uid` from the user database, with `gid` (default: its primary group).

    Raises:
        ExecutorError: no account has that uid.
    """
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise ExecutorError(
            f"uid {uid} has no account on this machine (`getent passwd {uid}` finds none), so "
            "ecoq cannot start its job as that user; restore the account or cancel the job"
        ) from None
    primary = entry.pw_gid if gid is None else gid
    groups = os.getgrouplist(entry.pw_name, primary)
    return Identity(uid, primary, tuple(dict.fromkeys([primary, *groups])), entry.pw_name)


def resolve(
    job_id: int, uid: int | None, gid: int | None, policy: RunAs | None, *, euid: int
) -> Identity | None:
    """Whom job `job_id` (submitted by `uid`) runs as; None: as the daemon's own user.

    Without a policy (personal mode) a root daemon switches to the job's uid when it has one;
    any other daemon runs jobs as itself, as it always did. With a policy (shared box) the
    switch is mandatory.

    Raises:
        ExecutorError: shared box and the job has no owner, its owner is root (and root's jobs
            are not allowed), the daemon is not root, or the owner has no account.
    """
    if policy is None:
        if uid is None or uid == euid or euid != 0:
            return None
        return lookup(uid, gid)
    if uid is None and policy.owner_uid is not None:
        uid = policy.owner_uid(job_id)
    if uid is None:
        raise ExecutorError(
            f"job {job_id} has no owner uid; a shared ecoq daemon runs jobs only as the users "
            "who submitted them"
        )
    if uid == 0 and not policy.allow_root:
        raise ExecutorError(
            f"job {job_id} was submitted by root; a shared ecoq daemon never runs jobs as root. "
            "Submit it as a user, or set shared.allow_root_jobs = true"
        )
    if euid != 0:
        raise ExecutorError(
            f"the shared ecoq daemon runs as uid {euid}, not root, so it cannot start job "
            f"{job_id} as uid {uid}; run `ecoq daemon` as root (config/ecoq.service)"
        )
    return None if uid == 0 else lookup(uid, gid)


def make_traversable(run_dir: Path, top: Path | None) -> None:
    """Let other users pass through `run_dir` and its parents up to `top` (mode 0711: search,
    no listing), so a job's user reaches the files in it that it owns. Raises OSError."""
    folders = [run_dir]
    if top is not None and run_dir.is_relative_to(top):
        folders += [p for p in run_dir.parents if p.is_relative_to(top)]
    for folder in folders:
        mode = folder.stat().st_mode & 0o777
        if mode & 0o111 != 0o111:
            os.chmod(folder, mode | 0o111)
