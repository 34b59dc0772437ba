"""The keys file: a client added by `serve --add_client` is never lost, whatever runs beside it,
and a name or budget that would lock the owner out is refused."""

import threading
from pathlib import Path

import pytest

from knockoff_lab.api import keys
from knockoff_lab.api.keys import add_client, read_keys
from knockoff_lab.core.errors import ConfigError


def test_concurrent_add_client_calls_keep_every_key(tmp_path: Path, monkeypatch):
    """Eight clients added at once, each reading the file slowly (the window in which a call
    without the lock reads the file before another's write lands): all eight keys are kept."""
    read = keys.read_keys

    def slow_read(path):
        threading.Event().wait(0.05)
        return read(path)

    monkeypatch.setattr(keys, "read_keys", slow_read)
    path = tmp_path / "keys.json"
    errors: list[BaseException] = []

    def add(name: str) -> None:
        try:
            add_client(path, name)
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=add, args=(f"client{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(entry.client for entry in read_keys(path)) == [f"client{i}" for i in range(8)]
    assert not list(tmp_path.glob("*.tmp")) and path.stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "client, budget, message",
    [
        ("", None, "--add_client needs a client name, got ''"),
        ("  ", None, "--add_client needs a client name"),
        ("bob", 0, "--client_budget must be >= 1 (or absent: no own budget), got 0"),
        ("bob", -5, "--client_budget must be >= 1"),
    ],
)
def test_a_name_or_budget_that_would_lock_the_owner_out_is_refused(
    tmp_path: Path, client, budget, message
):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_client(tmp_path / "keys.json", client, budget)
    assert not (tmp_path / "keys.json").exists()
