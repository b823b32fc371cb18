"""File discovery: the manifest's shapes and refusals, and the shell that rereads it as it changes
(on trio's mock clock; the file is real, the gateway's callbacks are recorded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from smg.discovery.file import POLL_SECS, Callbacks, FileDiscovery
from smg.discovery.manifest import ManifestError, WorkerSpec, diff, parse


def test_a_manifest_lists_urls_or_objects_with_settings() -> None:
    specs = parse(json.dumps(["http://w1:8000/", {"url": "http://w2:8000", "labels": {"zone": "a"}, "priority": 3}]).encode())
    assert specs == [
        WorkerSpec("http://w1:8000"),
        WorkerSpec("http://w2:8000", {"labels": {"zone": "a"}, "priority": 3}),
    ]
    assert parse(b'{"workers": ["http://w1:8000"]}') == [WorkerSpec("http://w1:8000")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", r"^not JSON"),
        (b'{"servers": []}', r"expected a list of workers"),
        (b"[42]", r"^workers\[0\]: a URL, or an object with a 'url'$"),
        (b'[{"url": "http://w:1", "weight": 2}]', r"^workers\[0\]: unknown field weight$"),
        (b'[{"url": "http://w:1", "priority": -1}]', r"^workers\[0\]\.priority: 'priority' must be an integer"),
        (b'["ftp://w:1"]', r"^workers\[0\]\.url: "),
        (b'["http://w:1", "http://w:1/"]', r"^workers\[1\]: http://w:1 is listed twice$"),
    ],
)
def test_a_bad_manifest_is_refused_whole_with_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse(data)


def test_the_diff_adds_updates_and_removes_only_what_discovery_owns() -> None:
    a, b, c = WorkerSpec("http://a:1"), WorkerSpec("http://b:1"), WorkerSpec("http://c:1")
    changes = diff([a, WorkerSpec("http://b:1", {"priority": 2})], {"http://b:1": b, "http://c:1": c})
    assert changes.add == [a]
    assert changes.update == [WorkerSpec("http://b:1", {"priority": 2})]
    assert changes.remove == ["http://c:1"]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.refuse: set[str] = set()

    def callbacks(self) -> Callbacks:
        def add(spec: WorkerSpec) -> None:
            if spec.url in self.refuse:
                raise ValueError("refused")
            self.events.append((trio.current_time(), "add", spec.url))

        return Callbacks(
            add=add,
            update=lambda spec: self.events.append((trio.current_time(), "update", spec.url)),
            remove=lambda url: self.events.append((trio.current_time(), "remove", url)),
        )


def write(path: Path, workers: list[object]) -> None:
    """Write the manifest and move its modification time on, as a later write would."""
    path.write_text(json.dumps(workers))
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


async def test_the_manifest_may_appear_later_and_is_reread_as_it_changes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "workers.json"
    recorder = Recorder()
    discovery = FileDiscovery(str(path), check_interval=30.0, callbacks=recorder.callbacks())
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        await trio.sleep(5.5)  # between two polls: which of two tasks wakes first at one instant is not fixed
        assert recorder.events == []
        assert caplog.text.count("does not exist yet; waiting for it") == 1  # said once, not every poll

        write(path, ["http://a:1", "http://b:1"])
        await trio.sleep(POLL_SECS + 0.5)
        assert [e[1:] for e in recorder.events] == [("add", "http://a:1"), ("add", "http://b:1")]
        assert recorder.events[0][0] == 6.0  # picked up at the next poll

        write(path, ["http://b:1", {"url": "http://c:1", "priority": 1}])
        await trio.sleep(POLL_SECS + 0.5)
        assert [e[1:] for e in recorder.events[2:]] == [("add", "http://c:1"), ("remove", "http://a:1")]

        path.write_text("{broken")
        os.utime(path, ns=(path.stat().st_mtime_ns + 2_000_000_000,) * 2)
        await trio.sleep(POLL_SECS + 0.5)
        assert len(recorder.events) == 4  # a broken manifest changes nothing
        assert "is not used (the workers stay as they were): not JSON" in caplog.text
        nursery.cancel_scope.cancel()


async def test_an_unchanged_manifest_is_still_reread_every_check_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "workers.json"
    write(path, ["http://a:1"])
    recorder = Recorder()
    recorder.refuse.add("http://a:1")  # refused once (e.g. a duplicate): tried again at the next reread
    discovery = FileDiscovery(str(path), check_interval=30.0, callbacks=recorder.callbacks())
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        await trio.sleep(1)
        assert discovery.rereads == 1 and recorder.events == []
        recorder.refuse.clear()
        await trio.sleep(28.5)  # t = 29.5: the reread is due at 30
        assert discovery.rereads == 1
        await trio.sleep(1)
        assert discovery.rereads == 2 and [e[1:] for e in recorder.events] == [("add", "http://a:1")]
        nursery.cancel_scope.cancel()
