"""`flywheel logs import|export|stats|delete|erasures` as a user runs them (subprocess, --json last line)."""

import json
import subprocess
import sys
import time

from flywheel.records import LogRecord
from flywheel.store import open_store
from tests.unit.test_records import NVIDIA


def flywheel(*args, home, columns=80):
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], check=False, capture_output=True,
                          text=True, env={"FLYWHEEL_HOME": str(home), "PATH": "/usr/bin:/bin",
                                          "COLUMNS": str(columns)}, timeout=120)


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_reports_bad_lines_and_reimport_adds_nothing(tmp_path):
    home = tmp_path / "home"
    lines = [json.dumps(NVIDIA), "{not json", "",
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
             json.dumps({"messages": [{"role": "user", "content": "no answer"}]})]
    file = tmp_path / "logs.jsonl"
    file.write_text("\n".join(lines) + "\n")

    first = flywheel("logs", "import", str(file), "--json", home=home)
    assert first.returncode == 0, first.stderr
    summary = last_json(first)
    assert (summary["imported"], summary["bad"]) == (2, 2)
    assert [e.split(":")[0] for e in summary["errors"]] == ["line 2", "line 5"]
    assert "line 5: the last message must be the assistant's answer" in first.stderr

    again = last_json(flywheel("logs", "import", str(file), "--json", home=home))
    assert again["imported"] == 0

    stats = last_json(flywheel("logs", "stats", "--json", home=home))
    assert stats["total"] == 2
    assert stats["by_workload"] == {"default": 1, "primary_assistant": 1}
    assert set(stats) >= {"total", "by_workload", "by_model", "by_status"}

    out = tmp_path / "export.jsonl"
    exported = last_json(flywheel("logs", "export", "--out", str(out), "--workload", "primary_assistant", "--json",
                                  home=home))
    assert exported["exported"] == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["client_id"] == "aiva-1" and row["timestamp"] == NVIDIA["timestamp"]


def test_import_of_a_missing_file_is_one_line(tmp_path):
    result = flywheel("logs", "import", str(tmp_path / "absent.jsonl"), home=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
    folder = flywheel("logs", "import", str(tmp_path), home=tmp_path)
    assert folder.returncode == 2 and folder.stderr.strip() == f"error: {tmp_path}: a folder, not a file"


def test_an_import_workload_that_cannot_name_one_is_refused_before_reading(tmp_path):
    file = tmp_path / "logs.jsonl"
    file.write_text(json.dumps(NVIDIA) + "\n")
    result = flywheel("logs", "import", str(file), "--workload", "../x", "--json", home=tmp_path / "home")
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.strip() == ("error: --workload '../x': use letters, digits, '.', '_' and '-' only, "
                                     "starting with a letter or digit")


def test_export_makes_its_folders_and_an_unwritable_out_is_one_line(tmp_path):
    home = tmp_path / "home"
    file = tmp_path / "logs.jsonl"
    file.write_text(json.dumps(NVIDIA) + "\n")
    assert flywheel("logs", "import", str(file), "--json", home=home).returncode == 0

    nested = tmp_path / "backups" / "2026" / "logs.jsonl"
    done = flywheel("logs", "export", "--out", str(nested), "--json", home=home)
    assert done.returncode == 0, done.stderr
    assert last_json(done) == {"exported": 1, "path": str(nested)} and len(nested.read_text().splitlines()) == 1
    for unwritable, why in ((tmp_path, "Is a directory"), (file / "below-a-file.jsonl", "File exists")):
        refused = flywheel("logs", "export", "--out", str(unwritable), "--json", home=home)
        assert refused.returncode == 2 and not refused.stdout
        assert refused.stderr.strip() == f"error: cannot write {unwritable}: {why}"


def test_delete_counts_first_and_removes_one_clients_or_old_records_only_when_told(tmp_path):
    home = tmp_path / "home"
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    now = time.time()
    asked = {"model": "small", "messages": [{"role": "user", "content": "where is my order?"}]}
    answered = {"choices": [{"message": {"role": "assistant", "content": "on its way"}}]}
    store.write_batch([LogRecord(workload_id="support", client_id=client, model="small", request=asked,
                                 response=answered, timestamp=now - age_days * 86400)
                       for client, age_days in [("alice", 0), ("alice", 40), ("bob", 0), ("bob", 40), ("carol", 1)]])
    store.close()

    backup = tmp_path / "backup.jsonl"
    assert last_json(flywheel("logs", "export", "--out", str(backup), "--json", home=home))["exported"] == 5
    refused = flywheel("logs", "delete", "--yes", home=home)
    assert refused.returncode == 2 and "name what to delete" in refused.stderr
    dry = last_json(flywheel("logs", "delete", "--client", "alice", "--json", home=home))
    assert (dry["matched"], dry["deleted"], dry["dry_run"], dry["filter"]) == (2, 0, True, {"client": "alice"})
    assert not dry["remembered"]
    assert last_json(flywheel("logs", "stats", "--json", home=home))["total"] == 5
    erased = last_json(flywheel("logs", "delete", "--client", "alice", "--yes", "--json", home=home))
    assert (erased["matched"], erased["deleted"], erased["dry_run"], erased["remembered"]) == (2, 2, False, True)
    retained = flywheel("logs", "delete", "--older-than-days", "30", "--yes", home=home)
    assert retained.returncode == 0 and "deleted 1 records" in retained.stdout  # bob's old one
    assert "remembers" not in retained.stdout  # an age alone leaves no tombstone
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    assert sorted(record.client_id for record in store.query().records) == ["bob", "carol"]
    store.close()

    [remembered] = last_json(flywheel("logs", "erasures", "--json", home=home))["erasures"]  # not the age-only one
    assert remembered["filter"] == {"client_id": "alice"} and now <= remembered["issued_at"] <= time.time()
    assert "client_id=alice" in flywheel("logs", "erasures", home=home, columns=160).stdout
    restored = last_json(flywheel("logs", "import", str(backup), "--json", home=home))  # a backup restored
    assert (restored["imported"], restored["erased"]) == (1, 2)  # bob's old one until retention runs; alice's stay out
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    assert sorted(record.client_id for record in store.query().records) == ["bob", "bob", "carol"]
    store.close()

    unknown = flywheel("logs", "erasures", "--lift", "nope", home=home)
    assert unknown.returncode == 2 and "no erasure 'nope'" in unknown.stderr
    lifted = last_json(flywheel("logs", "erasures", "--lift", remembered["id"], "--json", home=home))
    assert (lifted["lifted"], lifted["erasures"]) == (remembered["id"], [])  # a mistaken erasure, forgotten
    assert last_json(flywheel("logs", "import", str(backup), "--json", home=home))["imported"] == 2  # alice's two are back


def test_a_persons_records_are_found_by_the_text_they_hold_then_exported_and_erased(tmp_path):
    """An access request (`export --contains`), then the erasure (`delete --contains`): every
    record that mentions the person, whichever client sent it, and no other."""
    home = tmp_path / "home"
    store = open_store(f"sqlite:///{home / 'logs.db'}")
    said = ["My email is Ana.Lima@example.org", "ok", "write to ana.lima@EXAMPLE.org today", "analima"]
    store.write_batch([LogRecord(workload_id="support", client_id=client, model="small",
                                 request={"messages": [{"role": "user", "content": text}]})
                       for client, text in zip(["alice", "alice", "bob", "bob"], said, strict=True)])
    store.close()

    found = tmp_path / "ana.jsonl"
    assert last_json(flywheel("logs", "export", "--contains", "ana.lima@example.org", "--out", str(found), "--json",
                              home=home))["exported"] == 2
    assert sorted(json.loads(line)["client_id"] for line in found.read_text().splitlines()) == ["alice", "bob"]
    either = flywheel("logs", "export", "--contains", "ana.lima@example.org", "--contains", "ANALIMA", home=home)
    assert sorted(json.loads(line)["client_id"] for line in either.stdout.splitlines()) == ["alice", "bob", "bob"]
    empty = flywheel("logs", "export", "--contains", "", home=home)
    assert empty.returncode == 2 and "--contains must not be empty" in empty.stderr
    short = flywheel("logs", "delete", "--contains", " a ", home=home)
    assert short.returncode == 2 and "at least 3 characters" in short.stderr and short.stderr.count("\n") == 1
    dry = last_json(flywheel("logs", "delete", "--contains", "ana.lima@example.org", "--json", home=home))
    assert (dry["matched"], dry["deleted"], dry["filter"]) == (2, 0, {"contains": ["ana.lima@example.org"]})
    erased = last_json(flywheel("logs", "delete", "--contains", "ana.lima@example.org", "--yes", "--json", home=home))
    assert (erased["deleted"], erased["remembered"]) == (2, True)
    assert last_json(flywheel("logs", "stats", "--json", home=home))["by_status"] == {"ok": 2}
    assert "contains=ana.lima@example.org" in flywheel("logs", "erasures", home=home, columns=160).stdout
