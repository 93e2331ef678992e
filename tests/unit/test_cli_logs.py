"""`flywheel logs import|export|stats` as a user runs them (subprocess, --json last line)."""

import json
import subprocess
import sys

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
