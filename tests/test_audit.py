"""The audit log: write-ahead appends, a hash chain that names the entry that breaks it, torn tails."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from forensics import _io, audit
from forensics.audit import GENESIS, AuditLog, seal_path
from forensics.errors import ForensicsError, InputError, IntegrityError


@pytest.fixture
def log_path(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.append("start", payload={"dataset_hash": "abc"}, who="alice")
    log.append("flag", ids=["a", "b"], note="patch in corner", who="alice")
    log.append("confirm", ids=["b"], note="=HYPERLINK(\"x\")", who="bob")
    log.append("clear", ids=["a"], note="", who="bob")
    return path


def lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path, ls):
    path.write_bytes(b"".join(ln + b"\n" for ln in ls))


def rehash(line: bytes, **changes) -> bytes:
    entry = json.loads(line)
    entry.update(changes)
    entry["hash"] = audit.entry_hash(entry)
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def test_entries_form_a_chain_and_round_trip(log_path):
    log = AuditLog.load(log_path)
    assert len(log) == 4
    assert [e["seq"] for e in log] == [0, 1, 2, 3]
    assert [e["action"] for e in log] == ["start", "flag", "confirm", "clear"]
    assert log[0]["prev"] == GENESIS
    for before, after in zip(log.entries, log.entries[1:]):
        assert after["prev"] == before["hash"]
    e = log[1]
    body = {k: v for k, v in e.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert e["hash"] == hashlib.sha256(canonical).hexdigest()
    assert e["ids"] == ["a", "b"] and e["note"] == "patch in corner" and e["who"] == "alice"
    assert e["time"].endswith("+00:00")
    assert "ids" not in log[0] and log[0]["payload"] == {"dataset_hash": "abc"}
    assert log.head == (3, log[3]["hash"])
    assert log.verify() == 4
    # One canonical line per entry, ASCII only.
    assert all(ln == json.dumps(json.loads(ln), sort_keys=True, separators=(",", ":")).encode()
               for ln in lines(log_path))


def test_append_is_on_disk_before_it_returns(log_path):
    log = AuditLog.load(log_path)
    log.append("flag", ids=["c"], note="late", who="carol")
    # A second reader, as after a crash right after the call, sees the decision.
    again = AuditLog.load(log_path)
    assert len(again) == 5 and again[4]["ids"] == ["c"] and again[4]["note"] == "late"


def test_non_ascii_and_line_separators_stay_on_one_line(tmp_path):
    path = tmp_path / "a.jsonl"
    log = AuditLog(path)
    log.append("flag", ids=["id\u2028x", "\u202eevil"], note="line\nbreak \u00e9", who="z")
    assert len(lines(path)) == 1
    assert AuditLog.load(path)[0]["ids"] == ["id\u2028x", "\u202eevil"]


def test_edited_note_is_named(log_path):
    ls = lines(log_path)
    ls[1] = ls[1].replace(b"patch in corner", b"nothing to see")
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 1\): its hash does not match its content; "
                                             r"the entry was edited"):
        AuditLog.load(log_path)


def test_edited_entry_with_recomputed_hash_is_named_by_its_successor(log_path):
    ls = lines(log_path)
    ls[1] = rehash(ls[1], note="nothing to see")
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 3 \(seq 2\): 'prev' does not match the hash of the entry "
                                             r"before it \(line 2, seq 1\)"):
        AuditLog.load(log_path)


def test_deleted_entry_is_named(log_path):
    ls = lines(log_path)
    del ls[1]
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 2\): seq 2 where 1 was expected; an entry was "
                                             r"deleted or inserted"):
        AuditLog.load(log_path)


def test_reordered_entries_are_named(log_path):
    ls = lines(log_path)
    ls[1], ls[2] = ls[2], ls[1]
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 2\): seq 2 where 1 was expected.*reordered"):
        AuditLog.load(log_path)


def test_renumbered_entries_still_break_the_chain(log_path):
    ls = lines(log_path)
    del ls[1]
    ls[1:] = [rehash(ln, seq=i + 1) for i, ln in enumerate(ls[1:])]
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 2 \(seq 1\): 'prev' does not match"):
        AuditLog.load(log_path)


def test_a_line_that_is_not_an_entry_is_named(log_path):
    ls = lines(log_path)
    ls.insert(2, b'{"seq": 2, "oops"')
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 3 is not a JSON entry"):
        AuditLog.load(log_path)


def test_an_extra_key_is_an_edit(log_path):
    ls = lines(log_path)
    ls[2] = rehash(ls[2], status="cleared")
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 3 \(seq 2\): unknown keys \['status'\]"):
        AuditLog.load(log_path)


def test_torn_last_line_is_reported_and_repaired_on_request(log_path):
    data = log_path.read_bytes()
    whole = len(data)
    log_path.write_bytes(data + b'{"action":"flag","ids":["zz"')  # a crash in the middle of an append
    with pytest.raises(IntegrityError, match=r"the last entry \(line 5\) is incomplete.*repair=True"):
        AuditLog.load(log_path)
    assert len(log_path.read_bytes()) > whole  # a failed load changes nothing
    log = AuditLog.load(log_path, repair=True)
    assert [e["action"] for e in log] == ["start", "flag", "confirm", "clear", "repair"]
    assert log[4]["payload"]["dropped_bytes"] == len(b'{"action":"flag","ids":["zz"')
    assert log[4]["payload"]["line"] == 5
    assert log_path.read_bytes()[:whole] == data
    assert len(AuditLog.load(log_path)) == 5  # repaired for good


def test_a_torn_line_that_is_not_last_is_not_repaired(log_path):
    ls = lines(log_path)
    ls[3] = ls[3][:20]
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 4 is not a JSON entry"):
        AuditLog.load(log_path, repair=True)


def test_entries_deleted_from_the_end_are_caught_by_the_seal_and_by_an_anchor(log_path):
    head = AuditLog.load(log_path).head
    ls = lines(log_path)
    write_lines(log_path, ls[:-1])
    with pytest.raises(IntegrityError, match=r"ends at seq 2 but entry seq 3 is known to exist \(sealed after the "
                                             r"last decision\).*deleted from its end"):
        AuditLog.load(log_path)  # the seal, rewritten after every append, names the last entry
    seal_path(log_path).unlink()
    AuditLog.load(log_path)  # without its seal, the shorter chain is valid on its own ...
    with pytest.raises(IntegrityError, match=r"ends at seq 2 but entry seq 3 is known to exist.*deleted from its "
                                             r"end"):
        AuditLog.load(log_path, anchor=head)  # ... but not against the head recorded earlier
    with pytest.raises(IntegrityError, match=r"its seal .*\.seal is missing"):
        AuditLog.load(log_path, sealed=True)


def test_a_replaced_log_is_caught_by_an_anchor(log_path, tmp_path):
    head = AuditLog.load(log_path).head
    other = AuditLog(tmp_path / "other.jsonl")
    for i in range(5):
        other.append("flag", ids=[str(i)], who="mallory")
    log_path.write_bytes((tmp_path / "other.jsonl").read_bytes())
    with pytest.raises(IntegrityError, match=r"entry seq 3 \(line 4\) has hash .* was recorded at the last save"):
        AuditLog.load(log_path, anchor=head)


def test_verify_rereads_the_file(log_path):
    log = AuditLog.load(log_path)
    ls = lines(log_path)
    ls[3] = ls[3].replace(b'"who":"bob"', b'"who":"eve"')
    write_lines(log_path, ls)
    with pytest.raises(IntegrityError, match=r"line 4 \(seq 3\): its hash does not match"):
        log.verify()


def test_a_second_writer_is_refused_and_nothing_is_written(log_path):
    first, second = AuditLog.load(log_path), AuditLog.load(log_path)
    first.append("flag", ids=["c"], who="alice")
    size = log_path.stat().st_size
    with pytest.raises(IntegrityError, match=r"changed by another writer.*not recorded"):
        second.append("flag", ids=["d"], who="bob")
    assert log_path.stat().st_size == size
    assert len(second) == 4  # the refused entry is not kept in memory either
    assert len(AuditLog.load(log_path)) == 5


def test_a_log_that_vanished_is_not_recreated(log_path):
    log = AuditLog.load(log_path)
    log_path.unlink()
    with pytest.raises(IntegrityError, match="has disappeared"):
        log.append("flag", ids=["a"], who="x")
    assert not log_path.exists()


def test_new_log_refuses_an_existing_file(log_path):
    with pytest.raises(InputError, match=r"already exists; open it with AuditLog.load"):
        AuditLog(log_path)
    with pytest.raises(InputError, match="does not exist"):
        AuditLog.load(log_path.parent / "missing.jsonl")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": ""}, "action must be a non-empty string"),
        ({"action": "flag", "note": 3}, "note must be a string"),
        ({"action": "flag", "ids": ["a", 3]}, "ids must be strings; got int 3"),
        ({"action": "flag", "payload": {"x": float("nan")}}, "payload must hold only JSON values"),
        ({"action": "flag", "payload": {"x": object()}}, "payload must hold only JSON values"),
        ({"action": "flag", "who": " "}, "who must be a non-empty string"),
    ],
)
def test_append_checks_its_input(tmp_path, kwargs, message):
    log = AuditLog(tmp_path / "a.jsonl")
    action = kwargs.pop("action")
    with pytest.raises(InputError, match=message):
        log.append(action, **kwargs)
    assert len(log) == 0 and not (tmp_path / "a.jsonl").exists()


def test_in_memory_log_written_then_attached(tmp_path):
    log = AuditLog()
    log.append("start", who="a")
    log.append("flag", ids=["x"], who="a")
    assert log.path is None and log.verify() == 2
    log.write_to(tmp_path / "a.jsonl")
    log.append("clear", ids=["x"], who="a")
    assert [e["action"] for e in AuditLog.load(tmp_path / "a.jsonl")] == ["start", "flag", "clear"]


def test_default_who_is_the_os_user(tmp_path):
    log = AuditLog()
    assert log.append("flag", ids=["x"])["who"] == audit.default_who() != ""


def test_to_frame(log_path):
    df = AuditLog.load(log_path).to_frame()
    assert list(df.columns) == ["seq", "time", "who", "action", "n_ids", "note", "payload"]
    assert df["n_ids"].tolist() == [0, 2, 1, 1]
    assert str(df["time"].dt.tz) == "UTC"


def test_append_waits_for_the_folder_lock_then_fails_clearly(log_path, monkeypatch):
    monkeypatch.setattr(audit, "LOCK_TIMEOUT_S", 0.2)
    log = AuditLog.load(log_path)
    held, release = threading.Event(), threading.Event()

    def hold():
        with _io.file_lock(log_path.parent / ".lock"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(10)
        with pytest.raises(ForensicsError, match=r"is locked by another save or review in progress"):
            log.append("flag", ids=["a"], who="x")
    finally:
        release.set()
        t.join()
    assert len(AuditLog.load(log_path)) == 4
    log.append("flag", ids=["a"], who="x")  # free again
    assert len(AuditLog.load(log_path)) == 5


def test_a_failed_write_takes_its_partial_line_back(log_path, monkeypatch):
    log = AuditLog.load(log_path)
    before = log_path.read_bytes()
    real_write = audit.os.write

    def half_then_full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit.os, "write", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        log.append("flag", ids=["a"], who="x")
    monkeypatch.undo()
    assert log_path.read_bytes() == before and len(log) == 4
    log.append("flag", ids=["a"], who="x")  # the log goes on where it was
    assert len(AuditLog.load(log_path)) == 5
