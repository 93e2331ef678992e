"""`savings_report` and `flywheel savings`: what students saved, priced from the logged
answers of a real SQLite store and a real OpenSearch-compatible server (osmem-server)."""

import calendar
import json
import subprocess
import sys

import pytest

from flywheel.config import Price, TurnConfig, load_config
from flywheel.evaluation import EVAL_WORKLOAD
from flywheel.records import LogRecord
from flywheel.savings import savings_report
from flywheel.store import open_store
from tests.conftest import REPO
from tests.unit.test_cli_logs import flywheel, last_json
from tests.unit.test_curation_steps import REPO_CONFIG
from tests.unit.test_store_contract import index_url

DAY_1 = calendar.timegm((2026, 11, 1, 10, 0, 0))
DAY_2 = DAY_1 + 86400
PRICES = TurnConfig(teacher_price_per_mtok=10.0, student_price_per_mtok=0.2)


def answer(workload, ts, prompt, completion, adapter=None, **fields):
    usage = None if prompt is None else {"prompt_tokens": prompt, "completion_tokens": completion,
                                         "total_tokens": prompt + completion}
    return LogRecord(timestamp=ts, workload_id=workload, client_id="c", model="support", base_model="small",
                     adapter=adapter, request={"messages": [{"role": "user", "content": "q"}]},
                     usage=usage, **{"response": {"choices": [{"message": {"role": "assistant", "content": "a"}}]},
                                     **fields})


def traffic() -> list[LogRecord]:
    """support, day 1: the teacher answers 3 (120 tokens each), a student 2 (50 each), one
    shadow answer (50) and one failure; day 2: a student answer with no usage; billing:
    one teacher answer (200); evaluation: the teacher and a student, 100 each."""
    return [*(answer("support", DAY_1 + i, 100, 20) for i in range(3)),
            *(answer("support", DAY_1 + 10 + i, 40, 10, adapter="s1") for i in range(2)),
            answer("support", DAY_1 + 20, 40, 10, adapter="s2", tags={"shadow_of": "x", "role": "candidate"}),
            answer("support", DAY_1 + 30, None, None, status="error", response=None, error="boom"),
            answer("support", DAY_2, None, None, adapter="s1"),
            answer("billing", DAY_1 + 40, 150, 50),
            answer(EVAL_WORKLOAD, DAY_1 + 50, 80, 20), answer(EVAL_WORKLOAD, DAY_1 + 51, 80, 20, adapter="s1")]


@pytest.fixture(params=["sqlite", "opensearch"])
def store(request, tmp_path):
    url = (f"sqlite:///{tmp_path / 'logs.db'}" if request.param == "sqlite"
           else index_url(request.getfixturevalue("search_server"), "opensearch"))
    opened = open_store(url)
    opened.write_batch(traffic())
    yield opened
    opened.close()


def test_each_answer_is_priced_by_who_gave_it(store):
    report = savings_report(store, PRICES)
    support = report["workloads"]["support"]
    assert [support[kind]["requests"] for kind in ("teacher", "student", "shadow")] == [3, 3, 1]
    assert [support[kind]["tokens"] for kind in ("teacher", "student", "shadow")] == [360, 100, 50]
    assert support["teacher"]["prompt_tokens"] == 300 and support["student"]["completion_tokens"] == 20
    assert (support["errors"], support["without_usage"], support["student_share"]) == (1, 1, 0.5)
    # spent: 360 teacher tokens at $10/M, 100 student + 50 shadow at $0.2/M; had the teacher
    # answered all 460 served tokens: $0.0046
    assert support["usd"] == pytest.approx(360e-5 + 150 * 0.2e-6)
    assert support["usd_all_teacher"] == pytest.approx(460e-5)
    assert support["saved_usd"] == pytest.approx(460e-5 - 360e-5 - 150 * 0.2e-6)
    assert support["saved_fraction"] == pytest.approx(support["saved_usd"] / 460e-5)

    billing = report["workloads"]["billing"]
    assert (billing["teacher"]["tokens"], billing["student_share"], billing["saved_usd"]) == (200, 0.0, 0.0)
    # evaluation served nobody: its cost (the teacher's 100 tokens, a student's 100) counts against the saving
    evaluation = report["workloads"][EVAL_WORKLOAD]
    assert (evaluation["evaluation"]["requests"], evaluation["student_share"], evaluation["saved_fraction"]) == (2, None,
                                                                                                               None)
    assert evaluation["usd"] == pytest.approx(100e-5 + 100 * 0.2e-6) == -evaluation["saved_usd"]
    total = report["total"]
    assert (total["teacher"]["tokens"], total["student"]["requests"], total["evaluation"]["tokens"]) == (560, 3, 200)
    assert total["usd_all_teacher"] == pytest.approx(660e-5)
    assert total["saved_usd"] == pytest.approx(660e-5 - 660e-5 - 250 * 0.2e-6)  # evaluation ate this one's saving
    assert list(report["days"]) == ["2026-11-01", "2026-11-02"]
    assert report["days"]["2026-11-02"]["student"]["requests"] == 1 and report["days"]["2026-11-02"]["usd"] == 0


def test_the_window_and_workload_narrow_what_is_counted(store):
    late = savings_report(store, PRICES, since=DAY_2)
    assert list(late["workloads"]) == ["support"] and late["total"]["student"]["requests"] == 1
    assert late["total"]["saved_fraction"] is None  # nothing priced: no fraction to claim
    only = savings_report(store, PRICES, workload="billing", until=DAY_2)
    assert list(only["workloads"]) == ["billing"] and only["total"]["teacher"]["requests"] == 1
    assert savings_report(store, PRICES, workload="absent")["total"]["student_share"] is None


def test_models_with_their_own_prices_are_priced_by_input_and_output_tokens(tmp_path):
    """A hosted teacher at $2.50 / $10 per million input / output tokens answers 2 requests
    (100 + 20 tokens each); a student on `small`, which has no price of its own, 3 (40 + 10).
    Had the teacher answered the students' requests, it would have charged its own prices."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch([*(answer("support", DAY_1 + i, 100, 20).model_copy(update={"base_model": "hosted"})
                         for i in range(2)),
                       *(answer("support", DAY_1 + 10 + i, 40, 10, adapter="s1") for i in range(3))])
    report = savings_report(store, PRICES, {"hosted": Price(input=2.5, output=10.0)})
    support = report["workloads"]["support"]
    assert report["teacher_models"] == {"support": "hosted"}
    assert support["teacher"]["usd"] == pytest.approx(2 * (100 * 2.5 + 20 * 10) / 1e6)
    assert support["student"]["usd"] == pytest.approx(3 * 50 * 0.2 / 1e6)  # the flat student price
    assert support["usd_all_teacher"] == pytest.approx((2 * 450 + 3 * (40 * 2.5 + 10 * 10)) / 1e6)
    assert support["saved_usd"] == pytest.approx(support["usd_all_teacher"] - (900 + 30) / 1e6)
    assert report["prices_per_mtok"]["models"] == {"hosted": {"input": 2.5, "output": 10.0}}
    flat = savings_report(store, PRICES)["workloads"]["support"]  # without it: $10 per million, any token
    assert flat["usd_all_teacher"] == pytest.approx((240 + 150) * 10 / 1e6)
    store.close()


def test_the_teachers_audits_of_a_student_are_the_flywheels_own_cost_at_the_teachers_price(tmp_path):
    """A student serves 3 requests (40 + 10 tokens each) and a hosted teacher audits one of
    them (100 + 20): the audit served nobody, so it counts against the saving, at the
    teacher's own prices; and it tells whose answers the students replace."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    store.write_batch([*(answer("support", DAY_1 + i, 40, 10, adapter="s1") for i in range(3)),
                       answer("support", DAY_1 + 5, 100, 20, tags={"shadow_of": "x", "role": "teacher"}
                              ).model_copy(update={"base_model": "hosted"})])
    report = savings_report(store, PRICES, {"hosted": Price(input=2.5, output=10.0)})
    support = report["workloads"]["support"]
    assert [support[kind]["requests"] for kind in ("teacher", "student", "shadow", "audit")] == [0, 3, 0, 1]
    assert report["teacher_models"] == {"support": "hosted"} and support["student_share"] == 1.0
    assert support["audit"]["usd"] == pytest.approx((100 * 2.5 + 20 * 10) / 1e6)
    assert support["usd_all_teacher"] == pytest.approx(3 * (40 * 2.5 + 10 * 10) / 1e6)
    assert support["saved_usd"] == pytest.approx(support["usd_all_teacher"] - support["audit"]["usd"]
                                                 - 3 * 50 * 0.2 / 1e6)
    store.close()


def test_flywheel_savings_reads_the_configured_store(tmp_path):
    home = tmp_path / "home"
    assert "no logged requests" in flywheel("savings", home=home).stdout
    config = load_config(REPO_CONFIG, {"home": str(home)})
    store = open_store(config.store_url)
    store.write_batch(traffic())
    store.close()

    report = last_json(flywheel("savings", "--workload", "support", "--json", home=home))
    expected = savings_report(open_store(config.store_url), config.turn, config.serve.price_list(), workload="support")
    assert report["total"] == expected["total"] and list(report["workloads"]) == ["support"]
    assert last_json(flywheel("savings", "--days", "1", "--json", home=home))["workloads"] == {}  # all older
    shown = flywheel("savings", "--by-day", home=home, columns=250)
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in ("support", "billing", EVAL_WORKLOAD, "2026-11-01", "2026-11-02",
                                                 "total"))
    assert "answers with no token usage, priced at $0: 1" in shown.stdout
    assert flywheel("savings", "--days", "-1", home=home).returncode == 2

    priced = tmp_path / "priced.yaml"  # `small`, the traffic's base, with prices of its own
    priced.write_text(json.dumps({"serve": {"models": [{"name": "small", "source": "x",
                                                        "price_per_mtok": {"input": 1.0, "output": 4.0}}]}}))
    report = last_json(flywheel("savings", "--config", str(priced), "--json", home=home))
    assert report["prices_per_mtok"]["models"] == {"small": {"input": 1.0, "output": 4.0}}
    assert report["workloads"]["billing"]["usd"] == pytest.approx((150 * 1.0 + 50 * 4.0) / 1e6)
    assert "small $1 in / $4 out" in flywheel("savings", "--config", str(priced), home=home, columns=250).stdout


def test_the_savings_benchmark_prices_every_student_answer():
    """bench/savings_scan.py at a small size: it asserts the report counts every record."""
    result = subprocess.run([sys.executable, "bench/savings_scan.py", "--records", "300", "--repeat", "1"],
                            check=False, text=True, capture_output=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["benchmark"], report["records"], report["records_per_s"] > 0) == ("savings_scan", 300, True)
