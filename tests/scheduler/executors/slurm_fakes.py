"""Fakes for the Slurm tests: a runner that answers from a script, and the test cluster."""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ecoq.scheduler.executors.slurm_site import CommandResult

#: The slurm.conf of a running test cluster (read before conftest cleans ECOQ_* per test);
#: `tests/services/slurm.sh start DIR` prints it and `.ci/run` exports it.
SLURM_CONF = os.environ.get("ECOQ_TEST_SLURM_CONF", "")


@dataclass
class FakeRunner:
    """Answers Slurm commands from a script of (argv prefix -> result), recording each call."""

    answers: list[tuple[tuple[str, ...], CommandResult | Callable[[], CommandResult]]] = field(
        default_factory=list
    )
    calls: list[tuple[list[str], dict[str, str]]] = field(default_factory=list)

    def on(self, *prefix: str, rc: int = 0, out: str = "", err: str = "") -> None:
        self.answers.append((prefix, CommandResult(prefix, rc, out, err)))

    def __call__(
        self, argv: Sequence[str], *, env: Mapping[str, str], timeout_s: float
    ) -> CommandResult:
        self.calls.append((list(argv), dict(env)))
        for prefix, answer in self.answers:
            if tuple(argv[: len(prefix)]) == prefix:
                result = answer() if callable(answer) else answer
                return CommandResult(tuple(argv), result.returncode, result.stdout, result.stderr)
        raise AssertionError(f"unexpected command {argv}")

    def argv(self, program: str) -> list[str]:
        return next(a for a, _ in self.calls if a[0] == program)
