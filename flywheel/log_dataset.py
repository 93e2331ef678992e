"""`read_logs`: any log store as a Ray Dataset, read in parallel partitions.

One `Datasource` serves every backend through the store Protocol: the store splits the
filtered scan (`partitions`: rowid ranges for SQLite, slices of one point in time for
Elasticsearch/OpenSearch) and each read task reopens the store by URL and `scan`s its
slice. (`ray.data.read_sql` shards only with MD5/MOD in SQL, which SQLite lacks, so it
would read in one task.)

Rows are flat: the columns curation filters on, plus `record`, the whole `LogRecord` as
JSON. Request and response bodies vary from record to record, so they stay one string
column instead of an Arrow struct whose schema would differ between blocks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pyarrow
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from flywheel.store import SCAN_FIELDS, LogFilter, LogStore, Partition, open_store

SCHEMA = pyarrow.schema([(field, pyarrow.float64() if field == "timestamp" else pyarrow.string())
                         for field in SCAN_FIELDS])
ROWS_PER_PARTITION = 20_000  # default split: one read task per this many records
MAX_PARTITIONS = 256
ROWS_PER_BLOCK = 5_000
BYTES_PER_ROW = 2_000  # a typical tool-calling record, for Ray's memory planning


def read_logs(store: LogStore | str, filter: LogFilter = LogFilter(),
              parallelism: int | None = None) -> ray.data.Dataset:
    """The filtered records of `store` (a store or its URL) as a lazy Dataset with the columns
    of `SCHEMA`. `parallelism`: read tasks (default: one per 20k records, at most
    256)."""
    url = store if isinstance(store, str) else store.url
    opened = open_store(url)
    try:
        count = opened.count(filter)
    finally:
        opened.close()
    if parallelism is None:  # many small tasks: the work downstream starts early and balances
        parallelism = max(1, min(MAX_PARTITIONS, math.ceil(count / ROWS_PER_PARTITION)))
    return ray.data.read_datasource(LogStoreDatasource(url, filter, count), override_num_blocks=parallelism)


class LogStoreDatasource(Datasource):
    def __init__(self, url: str, filter: LogFilter, count: int):
        super().__init__()
        self._url, self._filter, self._count = url, filter, count

    def estimate_inmemory_data_size(self) -> int:
        return self._count * BYTES_PER_ROW

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        store = open_store(self._url)
        try:
            partitions = store.partitions(self._filter, max(1, parallelism))
        finally:
            store.close()
        url = self._url
        return [ReadTask(lambda partition=partition: _read_partition(url, partition),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None),
                         per_task_row_limit=per_task_row_limit)
                for partition in partitions]

    def get_name(self) -> str:
        return "LogStore"


def _read_partition(url: str, partition: Partition) -> Iterator[pyarrow.Table]:
    store = open_store(url)
    try:
        rows = store.scan(partition)
        while batch := list(itertools.islice(rows, ROWS_PER_BLOCK)):
            yield pyarrow.table(list(zip(*batch, strict=True)), schema=SCHEMA)
    finally:
        store.close()
