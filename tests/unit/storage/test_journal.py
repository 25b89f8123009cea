"""Spill journal: durability, ordering, checkpointing and corruption recovery."""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.storage import journal as journal_mod
from extproc.storage.journal import JOURNAL_NAME, OFFSET_NAME, Journal


def _frame(payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def _open(path: Path) -> Journal:
    return Journal(path, fsync=False)


def _drain(j: Journal, limit: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while True:
        records, token = j.read_batch(limit)
        j.ack(token)
        out.extend(records)
        if not records:
            return out


def _read_all(j: Journal) -> list[bytes]:
    records, _ = j.read_batch(10_000)
    return records


def test_round_trip_across_batches_and_reopen(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"a", b"b"])
    j.append([b"c"])
    assert j.pending() == 3
    records, token = j.read_batch(2)
    assert records == [b"a", b"b"]
    j.ack(token)
    assert j.pending() == 1
    j.close()

    j = _open(tmp_path)
    assert (tmp_path / OFFSET_NAME).read_text().strip() == str(token)
    assert j.pending() == 1
    j.append([b"d"])
    assert _read_all(j) == [b"c", b"d"]
    j.close()


def test_fsync_mode_is_durable_across_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "nested" / "dir", fsync=True)
    j.append([b"one", b"two"])
    _, token = j.read_batch(1)
    j.ack(token)
    j.close()
    j = Journal(tmp_path / "nested" / "dir", fsync=True)
    assert _read_all(j) == [b"two"]
    assert j.pending() == 1
    j.close()


def test_read_batch_respects_limit_and_order_and_is_repeatable(tmp_path: Path) -> None:
    j = _open(tmp_path)
    data = [bytes([i]) * (i + 1) for i in range(10)]
    j.append(data[:4])
    j.append(data[4:])
    first, token = j.read_batch(3)
    assert first == data[:3]
    # Without an ack the same records come back: the checkpoint only moves on ack.
    assert j.read_batch(3) == (first, token)
    j.ack(token)
    assert j.read_batch(100)[0] == data[3:]
    assert j.read_batch(100)[0] == data[3:]
    with pytest.raises(ValueError):
        j.read_batch(0)


def test_empty_journal_reads_nothing(tmp_path: Path) -> None:
    j = _open(tmp_path)
    records, token = j.read_batch(5)
    assert records == [] and token == 0
    j.ack(token)
    assert j.pending() == 0


def test_ack_of_everything_truncates_and_resets(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"x" * 100, b"y" * 100])
    _, token = j.read_batch(10)
    j.ack(token)
    assert (tmp_path / JOURNAL_NAME).stat().st_size == 0
    assert (tmp_path / OFFSET_NAME).read_text().strip() == "0"
    assert j.pending() == 0
    j.append([b"z"])
    assert _read_all(j) == [b"z"]
    j.close()
    assert _read_all(_open(tmp_path)) == [b"z"]


def test_ack_rejects_offsets_outside_the_unacked_range(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"a", b"b"])
    _, token = j.read_batch(1)
    j.ack(token)
    with pytest.raises(ValueError):
        j.ack(token - 1)
    with pytest.raises(ValueError):
        j.ack(10_000)


def test_ack_without_matching_read_recounts(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"a", b"b", b"c"])
    _, token = j.read_batch(2)
    j.read_batch(1)  # a later read replaces the memo; ack must still count correctly
    j.ack(token)
    assert j.pending() == 1


def test_rejects_empty_and_oversized_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = _open(tmp_path)
    with pytest.raises(ValueError):
        j.append([b"ok", b""])
    monkeypatch.setattr(journal_mod, "MAX_RECORD", 4)
    with pytest.raises(ValueError):
        j.append([b"12345"])
    assert j.pending() == 0
    assert (tmp_path / JOURNAL_NAME).stat().st_size == 0


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.close()
    j.close()
    with pytest.raises(ValueError):
        j.append([b"a"])


@pytest.mark.parametrize("cut", [1, 5, 8, 10])
def test_torn_tail_is_skipped_and_truncated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    j = _open(tmp_path)
    j.append([b"first", b"second"])
    j.append([b"third-record"])
    j.close()
    path = tmp_path / JOURNAL_NAME
    full = path.stat().st_size
    good = len(_frame(b"first")) + len(_frame(b"second"))
    # Cut inside the last frame: header only partly there, or payload short.
    os.truncate(path, good + min(cut, len(_frame(b"third-record")) - 1))

    with caplog.at_level(logging.WARNING, logger=journal_mod.__name__):
        j = _open(tmp_path)
    assert any("truncating" in r.getMessage() for r in caplog.records)
    assert path.stat().st_size == good < full
    assert j.skipped == 1
    assert j.pending() == 2
    j.append([b"after"])
    assert _read_all(j) == [b"first", b"second", b"after"]
    j.close()
    assert _read_all(_open(tmp_path)) == [b"first", b"second", b"after"]


def test_zero_filled_tail_is_not_read_as_records(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"keep"])
    j.close()
    with open(tmp_path / JOURNAL_NAME, "ab") as fh:
        fh.write(b"\0" * 4096)  # what a crash after a size update but before data looks like
    j = _open(tmp_path)
    assert _read_all(j) == [b"keep"]
    assert (tmp_path / JOURNAL_NAME).stat().st_size == len(_frame(b"keep"))


def test_corrupt_crc_in_the_middle_skips_one_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = _open(tmp_path)
    j.append([b"r0", b"r1-payload", b"r2"])
    j.append([b"r3"])
    j.close()
    path = tmp_path / JOURNAL_NAME
    raw = bytearray(path.read_bytes())
    raw[len(_frame(b"r0")) + 8] ^= 0xFF  # first payload byte of r1
    path.write_bytes(bytes(raw))

    with caplog.at_level(logging.WARNING, logger=journal_mod.__name__):
        j = _open(tmp_path)
    assert any("CRC mismatch" in r.getMessage() for r in caplog.records)
    assert j.skipped == 1
    assert j.pending() == 3
    assert _read_all(j) == [b"r0", b"r2", b"r3"]
    assert _read_all(j) == [b"r0", b"r2", b"r3"]
    assert j.skipped == 1  # re-reading the same damage does not count it again
    assert _drain(j, limit=1) == [b"r0", b"r2", b"r3"]
    assert j.pending() == 0


@pytest.mark.parametrize("bad_length", [0, 0xFFFFFFFF, 7])
def test_corrupt_length_resynchronises(tmp_path: Path, bad_length: int) -> None:
    # 0: never a record; huge: past EOF; 7: plausible but lands mid-frame.
    j = _open(tmp_path)
    records = [b"alpha", b"bravo-bravo", b"charlie", b"delta"]
    j.append(records)
    j.close()
    path = tmp_path / JOURNAL_NAME
    raw = bytearray(path.read_bytes())
    start = len(_frame(b"alpha"))
    raw[start : start + 4] = struct.pack(">I", bad_length)
    path.write_bytes(bytes(raw))

    j = _open(tmp_path)
    assert _read_all(j) == [b"alpha", b"charlie", b"delta"]
    assert j.skipped == 1
    assert path.stat().st_size == len(raw)  # damage was mid-file: nothing truncated


def test_corruption_appended_after_open_is_counted_on_read(tmp_path: Path) -> None:
    j = _open(tmp_path)
    j.append([b"aa", b"bb", b"cc"])
    path = tmp_path / JOURNAL_NAME
    with open(path, "r+b") as fh:
        fh.seek(len(_frame(b"aa")) + 8)
        fh.write(b"XX")
    assert j.skipped == 0
    records, token = j.read_batch(10)
    assert records == [b"aa", b"cc"]
    assert j.skipped == 1
    j.ack(token)
    assert j.pending() == 0


def test_bad_checkpoint_replays_from_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = _open(tmp_path)
    j.append([b"a", b"b"])
    j.close()
    for text in ("garbage", "999999", "-3"):
        (tmp_path / OFFSET_NAME).write_text(text)
        with caplog.at_level(logging.WARNING, logger=journal_mod.__name__):
            j = _open(tmp_path)
        assert _read_all(j) == [b"a", b"b"]
        j.close()
    assert any("checkpoint" in r.getMessage() for r in caplog.records)


def test_crash_between_checkpoint_reset_and_truncate_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = _open(tmp_path)
    j.append([b"a", b"b"])
    _, token = j.read_batch(10)

    def boom(fd: int, length: int) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "ftruncate", boom)
    with pytest.raises(OSError):
        j.ack(token)
    monkeypatch.undo()
    # Duplicates are fine (the database upserts); losing records is not.
    assert j.pending() == 2
    assert _read_all(j) == [b"a", b"b"]
    j.close()
    assert _read_all(_open(tmp_path)) == [b"a", b"b"]


def test_failed_append_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal(tmp_path, fsync=True)
    j.append([b"kept"])
    size = (tmp_path / JOURNAL_NAME).stat().st_size

    def boom(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        j.append([b"lost-but-caller-knows"])
    monkeypatch.undo()
    assert (tmp_path / JOURNAL_NAME).stat().st_size == size
    assert j.pending() == 1
    j.append([b"next"])
    assert _read_all(j) == [b"kept", b"next"]


def test_two_threads_appending(tmp_path: Path) -> None:
    j = _open(tmp_path)
    per_thread, batch = 200, 5

    def writer(tag: int) -> None:
        for i in range(per_thread):
            j.append([f"{tag}:{i}:{k}".encode() for k in range(batch)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = _drain(j, limit=137)
    assert len(got) == 2 * per_thread * batch
    for tag in (0, 1):
        mine = [r for r in got if r.startswith(f"{tag}:".encode())]
        assert mine == [f"{tag}:{i}:{k}".encode() for i in range(per_thread) for k in range(batch)]
    assert j.skipped == 0


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.binary(min_size=1, max_size=40), max_size=6)),
        st.tuples(st.just("read_ack"), st.integers(min_value=1, max_value=8)),
        st.tuples(st.just("read_only"), st.integers(min_value=1, max_value=8)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_model_every_record_delivered_once_in_order(ops: list[tuple[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        j = _open(path)
        appended: list[bytes] = []
        delivered: list[bytes] = []
        for op, arg in ops:
            if op == "append":
                assert isinstance(arg, list)
                j.append(arg)
                appended.extend(arg)
            elif op in ("read_ack", "read_only"):
                assert isinstance(arg, int)
                records, token = j.read_batch(arg)
                cursor = len(delivered)
                assert records == appended[cursor : cursor + arg]
                if op == "read_ack":
                    j.ack(token)
                    delivered.extend(records)
            else:
                j.close()
                j = _open(path)
            assert j.pending() == len(appended) - len(delivered)
        delivered.extend(_drain(j, limit=3))
        assert delivered == appended
        assert j.pending() == 0 and j.skipped == 0
        assert (path / JOURNAL_NAME).stat().st_size == 0
        j.close()
