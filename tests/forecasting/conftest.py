"""No forecasting test may reach the network: real sockets are blocked for every test here."""

from collections.abc import Iterator

import pytest

from tests.forecasting.helpers import block_sockets


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    block_sockets(monkeypatch)
    yield
