"""One contract for every log-store backend: SQLite; OpenSearch (opensearch-py) against a
real OpenSearch-compatible server (osmem-server); Elasticsearch (the official client) against
the same server through `es_dialect.OpenSearchDialectNode`, and against a real Elasticsearch
when FLYWHEEL_ES_URL is set (e.g. `http://localhost:9200`)."""

import json
import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from flywheel import search_store
from flywheel.records import Feedback, LogRecord
from flywheel.search_clients import ElasticsearchClient
from flywheel.search_store import SearchLogStore
from flywheel.store import SCAN_FIELDS, LogFilter, Tombstone, Tombstones, every_record, fold, open_store


def index_url(server: str, flavour: str) -> str:
    scheme, _, rest = server.rstrip("/").partition("://")
    return f"{flavour}+{scheme}://{rest}/logs-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "opensearch", "elasticsearch-client", "elasticsearch"])
def store(request, tmp_path):
    opened = _open(request, request.param, tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=["opensearch", "elasticsearch-client"])
def engine_store(request, tmp_path):
    opened = _open(request, request.param, tmp_path)
    yield opened
    opened.close()


def _open(request, kind: str, tmp_path):
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    if kind == "opensearch":
        return open_store(index_url(request.getfixturevalue("search_server"), "opensearch"))
    if kind == "elasticsearch-client":
        from elasticsearch import Elasticsearch

        from tests.unit.es_dialect import OpenSearchDialectNode

        server = request.getfixturevalue("search_server")
        url = index_url(server, "elasticsearch")
        return SearchLogStore(url, ElasticsearchClient(urlsplit(url), Elasticsearch(server, node_class=OpenSearchDialectNode)))
    if not os.environ.get("FLYWHEEL_ES_URL"):
        pytest.skip("FLYWHEEL_ES_URL is not set: no Elasticsearch server can run here")
    return open_store(index_url(os.environ["FLYWHEEL_ES_URL"], "elasticsearch"))


def make(i: int, workload: str = "support", status: str = "ok", ts: float | None = None) -> LogRecord:
    return LogRecord(
        timestamp=1_700_000_000 + (i if ts is None else ts), workload_id=workload, client_id=f"c{i % 3}",
        model="small" if i % 2 else "small:tuned", request={"messages": [{"role": "user", "content": f"q{i}"}]},
        response={"choices": [{"message": {"role": "assistant", "content": f"a{i}"}}]}, status=status,
    )


def test_write_get_and_duplicates_are_skipped(store):
    records = [make(i) for i in range(10)]
    assert store.write_batch(records) == 10
    assert store.write_batch(records[:5] + [make(10)]) == 1
    assert store.count() == 11
    assert store.get(records[3].id) == records[3]
    assert store.get("nope") is None


def test_filters_and_count(store):
    store.write_batch([make(i) for i in range(6)] + [make(i, workload="billing", status="error") for i in range(6, 9)])
    assert store.count(LogFilter(workload_id="support")) == 6
    assert store.count(LogFilter(status="error")) == 3
    assert store.count(LogFilter(model="small")) == 4
    assert store.count(LogFilter(since=1_700_000_002, until=1_700_000_005)) == 3


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_query_pages_through_everything_once_in_order(store, order):
    records = [make(i, ts=i // 3) for i in range(25)]  # ties on timestamp, broken by id
    store.write_batch(records)
    pages = []
    query = store.query
    store.query = lambda *args, **kwargs: pages.append(query(*args, **kwargs)) or pages[-1]
    seen = list(every_record(store, LogFilter(), order, page_size=7))
    expected = sorted(records, key=lambda r: (r.timestamp, r.id), reverse=order == "desc")
    assert [r.id for r in seen] == [r.id for r in expected]
    assert [len(page.records) for page in pages] == [7, 7, 7, 4]
    pages.clear()
    first = every_record(store, LogFilter(), order, page_size=7)
    assert [next(first).id for _ in range(7)] == [r.id for r in expected[:7]] and len(pages) == 1  # no page ahead


def test_partitions_cover_the_filtered_scan_exactly_once(store, monkeypatch):
    monkeypatch.setattr(search_store, "SCAN_PAGE", 4)  # several pages per slice
    store.write_batch([make(i, workload="support" if i % 4 else "other") for i in range(50)])
    parts = store.partitions(LogFilter(workload_id="support"), 4)
    assert len(parts) == 4
    store.write_batch([make(101)])  # after the split: readers see the snapshot they were given
    rows = [dict(zip(SCAN_FIELDS, row, strict=True)) for part in parts for row in store.scan(part)]
    assert all(LogRecord.model_validate_json(row["record"]).id == row["id"] for row in rows)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == store.count(LogFilter(workload_id="support")) - 1


def test_feedback_is_appended_and_unknown_ids_are_reported(store):
    record = make(1)
    store.write_batch([record])
    assert store.add_feedback(record.id, Feedback(rating=-1, comment="wrong tool"))
    correction = {"role": "assistant", "content": None,
                  "tool_calls": [{"type": "function", "function": {"name": "refund", "arguments": "{}"}}]}
    assert store.add_feedback(record.id, Feedback(rating=1, correction=correction))
    assert [f.rating for f in store.get(record.id).feedback] == [-1, 1]
    assert store.get(record.id).feedback[1].correction == correction
    assert not store.add_feedback("missing", Feedback(rating=1))


def test_delete_removes_exactly_what_the_filter_matches(store):
    records = [make(i) for i in range(9)] + [make(i, workload="billing") for i in range(9, 12)]
    store.write_batch(records)
    assert store.delete(LogFilter(client_id="c1", workload_id="support")) == 3  # 1, 4, 7: one client's erasure
    assert store.delete(LogFilter(client_id="c1", workload_id="support")) == 0
    assert store.delete(LogFilter(until=1_700_000_003)) == 2  # 0 and 2: older than a retention cut
    left = {record.id for part in store.partitions(LogFilter(), 1) for record in
            (LogRecord.model_validate_json(row[-1]) for row in store.scan(part))}
    assert left == {r.id for i, r in enumerate(records) if i not in (0, 1, 2, 4, 7)}
    assert store.get(records[1].id) is None and store.count(LogFilter(workload_id="billing")) == 3


def test_an_erasure_is_remembered_so_late_copies_stay_out(store):
    """Records of an erased client that reach the store afterwards (a spool replay, a
    replica's queued batch, a re-import) are dropped; what the client sends after the
    erasure is kept; an age-only deletion (retention) leaves no tombstone; a lifted
    tombstone stops dropping, and the writer's cached tombstones see both changes."""
    records = [make(i) for i in range(6)]  # clients c0, c1, c2, c0, c1, c2
    store.write_batch(records[:3])
    before = time.time()
    assert store.delete(LogFilter(client_id="c1")) == 1
    assert store.delete(LogFilter(until=1_700_000_001)) == 1  # records[0]
    [tombstone] = store.tombstones()
    assert tombstone.filter == LogFilter(client_id="c1") and before <= tombstone.issued_at <= time.time()
    fresh = make(7).model_copy(update={"client_id": "c1", "timestamp": time.time() + 1})
    assert store.write_batch([records[1], records[4], records[0], fresh]) == 2  # records[0] and fresh
    assert store.get(records[1].id) is None and store.get(records[4].id) is None
    assert store.get(records[0].id) is not None and store.get(fresh.id) == fresh
    assert store.write_batch([records[4]]) == 0
    assert tombstone.id and not store.lift("no-such-erasure")
    assert store.lift(tombstone.id) and store.tombstones() == [] and not store.lift(tombstone.id)
    assert store.write_batch([records[4]]) == 1  # a mistaken erasure, lifted: its records may be stored again
    assert store.delete(LogFilter(client_id="c2")) == 1 and store.write_batch([records[5]]) == 0  # still guards


def _saying(i: int, text: str) -> LogRecord:
    return make(i).model_copy(update={"request": {"messages": [{"role": "user", "content": text}]}})


def test_a_text_filter_matches_alike_everywhere_and_its_erasure_is_remembered(store, monkeypatch):
    """`contains` is looked for in the whole stored record, letters of any script in any
    case (also where tool-call arguments escape them as `\\u00fc`) and the rest as written
    (quotes and newlines too): count, query pages, the scan and stats
    agree, a client narrows it, and deleting by a text remembers it, so an older copy
    that arrives later is dropped while the person's next request is kept."""
    monkeypatch.setattr(search_store, "SCAN_PAGE", 4)  # several pages per search
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "find", "arguments": '{"email": "jane.doe@example.com"}'}}]}
    records = [make(i) for i in range(30)]
    records[3] = _saying(3, "Mail me at Jane.Doe@Example.COM please")
    records[16] = make(16).model_copy(update={"response": {"choices": [{"message": call}]}})
    records[22] = _saying(22, 'She said "jane" twice\nthen left')
    records[26] = _saying(26, "Grüße von Jürgen")
    arguments = json.dumps({"name": 'Sean "O\'Neil"', "city": "Zürich"})  # quotes escaped twice, ü as \u00fc
    records[9] = make(9).model_copy(update={"response": {"choices": [{"message": {**call, "tool_calls": [
        {"type": "function", "function": {"name": "find", "arguments": arguments}}]}}]}})
    store.write_batch(records)
    assert store.count(LogFilter(contains='sean "o\'neil"')) == 1 and store.count(LogFilter(contains="ZÜRICH")) == 1
    jane = LogFilter(contains="JANE.doe@example.com")
    assert store.count(jane) == 2 and store.count(LogFilter(contains="nobody@example.com")) == 0
    assert store.count(LogFilter(contains='said "Jane" TWICE\nthen')) == 1
    assert store.count(LogFilter(contains="JÜRGEN")) == 1 and store.count(LogFilter(contains="grüsse")) == 0
    assert store.count(LogFilter(client_id="c0", contains="jane.doe@")) == 1  # records[3]; 16 is c1's
    assert store.count(LogFilter(contains=("jürgen", "Jürgen", "said \"jane\""))) == 2  # any of them
    seen, cursor = [], None
    while True:
        page = store.query(LogFilter(contains="jane"), order="desc", limit=1, cursor=cursor)
        seen += [record.id for record in page.records]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == [records[22].id, records[16].id, records[3].id]
    scanned = {row[0] for part in store.partitions(jane, 2) for row in store.scan(part)}
    assert scanned == {records[3].id, records[16].id}
    assert store.stats(jane)["total"] == 2
    assert store.stats(jane)["by_model"] == {"small": 1, "small:tuned": 1}
    assert store.delete(jane) == 2 and store.count() == 28 and store.get(records[22].id) is not None
    [tombstone] = store.tombstones()
    assert tombstone.filter == jane and tombstone.describe()["filter"] == {"contains": ("JANE.doe@example.com",)}
    later = _saying(40, "jane.doe@example.com again").model_copy(update={"timestamp": time.time() + 1})
    assert store.write_batch([records[3], records[16], records[4], later]) == 1  # only the new request
    assert store.get(later.id) == later and store.get(records[3].id) is None
    assert store.lift(tombstone.id) and store.write_batch([records[3]]) == 1
    assert "jane" not in json.dumps(_erasure_entries(store)).lower()  # a lifted erasure's text is not kept


def _erasure_entries(store) -> list:
    """What the store holds of its erasures, read around it."""
    if isinstance(store, SearchLogStore):
        found = store._client.search(store.tombstone_index, {"query": {"match_all": {}}, "size": 100})
        return [hit["_source"] for hit in found["hits"]["hits"]]
    with sqlite3.connect(store.path) as db:
        return [json.loads(entry) for (entry,) in db.execute("SELECT entry FROM tombstones")]


def test_tombstones_that_name_texts_cover_older_records_holding_them_for_their_client_only():
    texts = Tombstones([Tombstone(LogFilter(contains=("ana@x.org", "+44 7700 900123")), 1_700_000_100),
                        Tombstone(LogFilter(client_id="c1", contains="secret plan"), 1_700_000_100),
                        Tombstone(LogFilter(contains="zed's"), 1_700_000_050)])

    def said(text, ts, client="c0"):
        return _saying(0, text).model_copy(update={"timestamp": 1_700_000_000 + ts, "client_id": client})

    assert texts.covers(said("mail ANA@x.org", 60)) and not texts.covers(said("mail ANA@x.org", 100))
    assert texts.covers(said("call +44 7700 900123", 60)) and not texts.covers(said("call +44 7700 900124", 60))
    assert texts.covers(said("the SECRET plan", 60, "c1")) and not texts.covers(said("the secret plan", 60))
    assert texts.covers(said("zed's here", 40)) and not texts.covers(said("zed's here", 60))
    assert not texts.covers(said("zed here", 40)) and not Tombstones().covers(said("ana@x.org", 0))


def test_folding_lowers_every_script_and_letters_written_as_json_escapes():
    assert fold("JÜRGEN aus МОСКВА") == "jürgen aus москва"
    assert fold(r'{"city": "Z\u00DCRICH"}') == r'{"city": "z\u00fcrich"}'  # upper-case hex, as some encoders write
    assert fold(r"\u0130") == r"\u0130"  # İ lowers to two characters: the escape stays as written
    jurgen = Tombstones([Tombstone(LogFilter(contains="Jürgen"), 1_700_000_100)])
    assert jurgen.covers(_saying(0, "Grüße, JÜRGEN").model_copy(update={"timestamp": 1_700_000_000}))


def test_an_erasure_between_reading_tombstones_and_writing_still_wins(engine_store, monkeypatch):
    """The race a search engine allows (SQLite reads tombstones in the write's own
    transaction): the writer has checked its tombstones, another erasure records one and
    runs its delete-by-query, then the writer's bulk lands. The record must not stay."""
    bulk, raced = engine_store._client.bulk, []

    def erasure_first(operations):
        if operations[0]["create"]["_index"] == engine_store.index and not raced:
            raced.append(engine_store.delete(LogFilter(client_id="c1")))
        return bulk(operations)

    monkeypatch.setattr(engine_store._client, "bulk", erasure_first)
    records = [make(i) for i in range(3)]
    assert engine_store.write_batch(records) == 2
    assert raced == [0] and engine_store.get(records[1].id) is None and engine_store.count() == 2


def test_sqlite_erasure_leaves_no_copy_of_the_records_on_disk(tmp_path):
    """A DELETE alone only unlinks rows: their bytes stay in free pages and in the WAL until
    reused. An erasure must leave neither file holding the erased text, while the other
    records stay readable. Debian's SQLite zeroes freed pages by default, so here this
    catches the WAL half (it fails without the checkpoint); the store's own
    `secure_delete=ON` makes the other half hold on builds where it is off."""
    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}")
    secret = "card 4929-8841-0017-5531 of Ms Quincey"
    erased = make(1).model_copy(update={"client_id": "quincey",
                                        "request": {"messages": [{"role": "user", "content": secret}]}})
    kept = [make(i) for i in range(400)]
    store.write_batch(kept[:200] + [erased] + kept[200:])
    reader = open_store(store.url)  # another connection that has read: its snapshot must not pin the WAL
    assert reader.get(erased.id) is not None
    assert store.delete(LogFilter(client_id="quincey")) == 1
    files = [path for path in tmp_path.iterdir() if path.name.startswith("logs.db")]
    assert all(secret.encode() not in path.read_bytes() for path in files), [path.name for path in files]
    assert store.count() == 400 and reader.get(kept[5].id) is not None
    reader.close()
    store.close()


def test_stats(store):
    store.write_batch([make(i) for i in range(4)] + [make(9, workload="billing", status="error")])
    stats = store.stats()
    assert stats["total"] == 5
    assert stats["by_workload"] == {"billing": 1, "support": 4}
    assert stats["by_status"] == {"error": 1, "ok": 4}
    assert sum(stats["by_model"].values()) == 5 and sum(stats["by_day"].values()) == 5


def _writer(path: str, offset: int) -> None:
    store = open_store(f"sqlite:///{path}")
    for start in range(0, 400, 40):
        store.write_batch([make(offset + i) for i in range(start, start + 40)])
    store.close()


def test_two_processes_write_one_sqlite_file(tmp_path):
    path = str(tmp_path / "shared.db")
    open_store(f"sqlite:///{path}").close()  # create the schema once
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(path, offset)) for offset in (0, 10_000)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    store = open_store(f"sqlite:///{path}")
    assert store.count() == 800
    store.close()


def test_unknown_store_urls_are_refused():
    with pytest.raises(ValueError, match="unsupported scheme"):
        open_store("mongodb://x")
    with pytest.raises(ValueError, match="no scheme"):
        open_store("logs.db")
    with pytest.raises(ValueError, match="unknown option"):
        open_store("sqlite:///tmp/logs.db?journal=off")
    with pytest.raises(ValueError, match="timeout must be"):
        open_store("sqlite:///tmp/logs.db?timeout=soon")


def test_many_openers_of_a_new_sqlite_file_all_get_it(tmp_path):
    """Switching a new file to WAL fails at once with "database is locked" while another
    connection switches it (no busy wait): eight threads opening one new file at a time
    hit that in about 1 of 40 rounds before `_use_wal` retried it."""
    errors: list[Exception] = []

    def opener(path):
        try:
            open_store(f"sqlite:///{path}").close()
        except Exception as error:
            errors.append(error)

    for round_ in range(100):
        threads = [threading.Thread(target=opener, args=(tmp_path / f"{round_}.db",)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_sqlite_busy_timeout_bounds_the_wait_for_a_lock(tmp_path):
    """A store that another process holds locked fails after `timeout`, so the log writer
    can spool instead of stalling; the URL round-trips the option."""
    import sqlite3
    import time

    store = open_store(f"sqlite:///{tmp_path / 'logs.db'}?timeout=0.3")
    assert open_store(store.url).url == store.url
    locker = sqlite3.connect(tmp_path / "logs.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.write_batch([make(1)])
    assert time.monotonic() - started < 5
    locker.execute("COMMIT")
    assert store.write_batch([make(1)]) == 1


def test_answers_to_learn_from_are_counted_alike_by_every_backend(store):
    """What starts a turn (flywheel/watch.py) reads the bulk scan of a time window: the
    teacher's answers and its audits count, a student's own answers do not."""
    from flywheel.examples import count_ground_truth

    records = [make(i).model_copy(update={"base_model": "small", "adapter": "tuned" if i % 2 else None})
               for i in range(12)]
    records[3] = records[3].model_copy(update={"adapter": None, "tags": {"role": "teacher", "shadow_of": "x"}})
    records[5] = records[5].model_copy(update={"tags": {"role": "candidate", "shadow_of": "y"}})
    store.write_batch(records)
    everything, window = LogFilter(), LogFilter(since=1_700_000_002, until=1_700_000_008)
    assert count_ground_truth(store, everything, ()) == 7  # 6 teacher answers and 1 audit
    assert count_ground_truth(store, window, ()) == 4  # 2, 3 (the audit), 4, 6
    assert count_ground_truth(store, everything, ("small:tuned",)) == 4  # 1, 7, 9, 11: not 5, a trial's shadow
