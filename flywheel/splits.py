"""The global half of curation, on the driver over narrow columns: deduplication (exact,
then optional MinHash near-duplicates; newest wins) and the stratified eval/train/val
split. Each takes plain lists and returns row indices, so results depend only on the
data and the seed, never on how Ray partitioned the read."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field


def newest_per_key(keys: Sequence[str], timestamps: Sequence[float], ids: Sequence[str]) -> list[int]:
    """Indices of the newest row per key (ties: the larger id), in input order."""
    best: dict[str, int] = {}
    for index, key in enumerate(keys):
        current = best.get(key)
        if current is None or (timestamps[index], ids[index]) > (timestamps[current], ids[current]):
            best[key] = index
    return sorted(best.values())


def near_duplicates(texts: Sequence[str], timestamps: Sequence[float], ids: Sequence[str], threshold: float,
                    num_perm: int = 64, seed: int = 1) -> list[int]:
    """Indices to keep after dropping near-duplicates: MinHash over word 3-shingles with
    LSH at `threshold` (estimated Jaccard); within a group of similar rows the newest stays."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    order = sorted(range(len(texts)), key=lambda i: (timestamps[i], ids[i]), reverse=True)  # newest first
    keep = []
    for index in order:
        words = texts[index].split()
        shingles = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
        signature = MinHash(num_perm=num_perm, seed=seed)
        signature.update_batch([shingle.encode() for shingle in shingles])
        if lsh.query(signature):  # a newer near-duplicate is already kept
            continue
        lsh.insert(str(index), signature)
        keep.append(index)
    return sorted(keep)


@dataclass
class Split:
    train: list[int] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    eval: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # what the user should know (singletons, one label)


def _allocate(sizes: dict[str, int], total: int, caps: dict[str, int] | None = None) -> dict[str, int]:
    """Split `total` across labels in proportion to `sizes` (largest remainder), at most
    `caps[label]` each (by default size - 1, so every label keeps at least one training row)."""
    caps = caps if caps is not None else {label: max(0, size - 1) for label, size in sizes.items()}
    total = min(total, sum(caps.values()))
    if total <= 0:
        return dict.fromkeys(sizes, 0)
    whole = sum(sizes.values())
    shares = {label: total * size / whole for label, size in sizes.items()}
    counts = {label: min(int(share), caps[label]) for label, share in shares.items()}
    by_remainder = sorted(sizes, key=lambda label: (-(shares[label] - int(shares[label])), label))
    while sum(counts.values()) < total:
        progressed = False
        for label in by_remainder:
            if sum(counts.values()) < total and counts[label] < caps[label]:
                counts[label] += 1
                progressed = True
        if not progressed:
            break
    return counts


def stratified_split(ids: Sequence[str], labels: Sequence[str], eval_size: int, val_ratio: float,
                     seed: int, trained: Collection[str] = frozenset()) -> Split:
    """Eval first (`eval_size`, proportional per label), then `val_ratio` of the rest to val,
    also per label. A label with one row goes to train only (it cannot be both learned and
    tested); so does everything when the workload has a single label, with a message.

    Within a label, rows are ordered by a hash of (seed, id), not shuffled: a record keeps
    its place as the log grows, so the next turn's eval rows are this turn's eval rows plus
    new records. Ids in `trained` (rows an earlier adapter learned) never go to eval: where
    a label's share of eval grows, the next rows in line may be ones a student trained on,
    and the incumbent would be scored on its own training data."""
    def rank(index: int) -> bytes:
        return hashlib.blake2b(f"{seed}:{ids[index]}".encode(), digest_size=8).digest()

    by_label: dict[str, list[int]] = defaultdict(list)
    for index in sorted(range(len(ids)), key=rank):  # input order must not matter
        by_label[labels[index]].append(index)
    split = Split()
    singletons = sorted(label for label, rows in by_label.items() if len(rows) == 1)
    if singletons:
        split.messages.append(f"{len(singletons)} label(s) with a single record kept in train only: "
                              f"{', '.join(singletons[:5])}{'...' if len(singletons) > 5 else ''}")
    if len(by_label) == 1:
        split.messages.append(f"every record has the label {next(iter(by_label))!r}: "
                              "the split is random, not stratified")
    sizes = {label: len(rows) for label, rows in by_label.items()}
    trained = set(trained)
    untrained = {label: [i for i in rows if ids[i] not in trained] for label, rows in by_label.items()}
    eval_counts = _allocate(sizes, eval_size, {label: min(sizes[label] - 1, len(untrained[label]))
                                               for label in sizes})
    wanted = max(0, min(eval_size, sum(size - 1 for size in sizes.values())))  # what `_allocate` gives uncapped
    if sum(eval_counts.values()) < wanted:
        split.messages.append(f"eval has {sum(eval_counts.values())} rows where {wanted} were asked for: the "
                              "others left are rows earlier adapters trained on, kept out of eval")
    rest = {}
    for label, rows in by_label.items():
        chosen = set(untrained[label][:eval_counts[label]])
        split.eval += sorted(chosen)
        rest[label] = [i for i in rows if i not in chosen]
    val_counts = _allocate({label: len(rows) for label, rows in rest.items()},
                           round(val_ratio * sum(len(rows) for rows in rest.values())))
    for label, rows in rest.items():
        split.val += rows[:val_counts[label]]
        split.train += rows[val_counts[label]:]
    for part in (split.train, split.val, split.eval):
        part.sort(key=lambda i: ids[i])
    return split
