"""Saving and loading a :class:`~dangol_cloud.recommend.model.Recommender` without pickle.

Layout of a model folder ``<directory>/<version>/``: ``meta.json`` (format version, model version,
config, feature names, re-ranker intercept, training metadata) and ``arrays.npz`` (uncompressed NumPy
arrays; a sparse matrix ``m`` is stored as ``m__data``, ``m__indices``, ``m__indptr``, ``m__shape``).
Arrays are stored in their own dtypes (float32 embeddings), so a loaded model scores bit-identically. Arrays
added within format 1 are optional: a folder saved before them loads without that part (e.g. without the day-part
baskets per menu item, ``dayparts_group_*``, whose reasons then use the per-product lower bound).

:func:`scrub_customers` removes erased customers from a saved folder in place (their id, embedding, history,
day-part and TIFU rows), so an erasure leaves nothing of them that names or describes them.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .config import RecommenderConfig
from .factors import Factors
from .baselines import TifuKnn
from .dayparts import DayPartProfile
from .segments import SegmentTable
from .history import History, PopularityTable
from .rerank import FEATURES, Reranker
from .scoring import STAGE2_FEATURES, Stage2
from .trees import Forest

if TYPE_CHECKING:
    from .model import Recommender

FORMAT_VERSION = 1

#: Arrays with one row per customer (index order of ``customers``), zeroed by :func:`scrub_customers`.
CUSTOMER_ROWS = ("factors_user_emb", "history_visits", "dayparts_visits")
#: Sparse matrices with one row per customer.
CUSTOMER_SPARSE = ("history_visits_with_item", "history_lines", "history_decayed", "history_recency",
                   "history_ignored", "history_group_visits", "tifu_vectors")


def save_model(model: Recommender, directory: Path) -> Path:
    """Write ``model`` to ``directory/<model.version>/`` and return that folder (FileExistsError if present).

    Atomic: the files are written into a hidden ``.partial-*`` folder that is renamed into place at the end,
    so a process killed half-way never leaves a half-written model folder under its version name.
    """
    final = Path(directory) / model.version
    if final.exists():
        raise FileExistsError(f"{final}: model version already saved")
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".partial-{model.version}-", dir=final.parent))
    arrays: dict[str, np.ndarray] = {
        "customers": model.customers.astype(str), "items": model.items.astype(str),
        "categories": np.array([c if c is not None else "" for c in model.categories], dtype=str),
        "has_category": np.array([c is not None for c in model.categories]),
        "available": model.available, "item_pop": model.item_pop, "item_rep": model.item_rep,
        "history_visits": model.history.visits, "history_item_buyers": model.history.item_buyers,
        "history_item_repeaters": model.history.item_repeaters, "history_item_lines": model.history.item_lines,
        **({} if model.history.item_recent is None else {"history_item_recent": model.history.item_recent}),
    }  # fmt: skip
    for name in ("user_emb", "item_emb", "item_bias", "feature_emb", "feature_bias"):
        arrays[f"factors_{name}"] = getattr(model.factors, name)
    sparse = {"item_features": model.item_features, "popularity": model.popularity.counts,
              **{f"history_{k}": getattr(model.history, k) for k in ("visits_with_item", "lines", "decayed", "recency")}}
    if model.history.ignored is not None:
        sparse["history_ignored"] = model.history.ignored
    if model.history.item_group is not None and model.history.group_visits is not None:
        arrays["history_item_group"] = model.history.item_group
        sparse["history_group_visits"] = model.history.group_visits
    if model.dayparts is not None:
        arrays["dayparts_visits"], arrays["dayparts_item_counts"] = model.dayparts.visits, model.dayparts.item_counts
        sparse["dayparts_counts"] = model.dayparts.counts
        if model.dayparts.group_counts is not None:  # baskets per menu item (older models have none)
            arrays["dayparts_item_group"] = model.dayparts.item_group
            arrays["dayparts_group_item_counts"] = model.dayparts.group_item_counts
            sparse["dayparts_group_counts"] = model.dayparts.group_counts
    if model.segments is not None:
        arrays["segments_values"] = np.array(model.segments.values, dtype=str)
        sparse["segments_counts"] = model.segments.counts
    if model.history.tifu is not None:
        arrays["tifu_neighbours"] = model.history.tifu.neighbours.astype(np.int32)
        sparse["tifu_vectors"] = model.history.tifu.vectors
    for name, m in sparse.items():
        m = m.tocsr()
        arrays[f"{name}__data"], arrays[f"{name}__indices"] = m.data, m.indices
        arrays[f"{name}__indptr"], arrays[f"{name}__shape"] = m.indptr, np.array(m.shape)
    if model.reranker is not None:
        for name in ("weights", "mean", "scale", "coef"):
            arrays[f"reranker_{name}"] = getattr(model.reranker, name)
    if model.stage2 is not None:
        arrays.update(model.stage2.forest.to_arrays("stage2_"))
    np.savez(folder / "arrays.npz", **arrays)  # uncompressed: zlib took ~10 s for a whole-catalogue model
    meta = {
        "format": FORMAT_VERSION, "version": model.version, "config": model.config.to_dict(),
        "item_feature_names": model.item_feature_names, "history_ref_day": int(model.history.ref_day),
        "popularity": {"stores": model.popularity.stores, "has_hours": model.popularity.has_hours},
        "reranker": None if model.reranker is None else {
            "features": list(FEATURES), "intercept": model.reranker.intercept,
            "n_pairs": model.reranker.n_pairs, "n_customers": model.reranker.n_customers},
        "stage2": None if model.stage2 is None else {
            "features": list(STAGE2_FEATURES), "blend": model.stage2.blend, "candidates": model.stage2.candidates,
            "tifu_alpha": model.stage2.tifu_alpha, "validation": model.stage2.validation,
            "ignored_weight": model.stage2.ignored_weight},
        "meta": model.meta,
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    folder.chmod(0o755)
    os.rename(folder, final)  # atomic on POSIX; fails (OSError) if ``final`` appeared meanwhile
    return final


def load_model(cls: type[Recommender], path: Path) -> Recommender:
    """Read a folder written by :func:`save_model` into a ``cls`` instance."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {meta.get('format')!r}")
    with np.load(path / "arrays.npz", allow_pickle=False) as npz:
        a = {k: npz[k] for k in npz.files}

    def csr(name: str) -> sp.csr_matrix:
        return sp.csr_matrix((a[f"{name}__data"], a[f"{name}__indices"], a[f"{name}__indptr"]),
                             shape=tuple(a[f"{name}__shape"]))

    config = RecommenderConfig.from_dict(meta["config"])
    history = History(meta["history_ref_day"], csr("history_visits_with_item"), csr("history_lines"),
                      csr("history_decayed"), csr("history_recency"), a["history_visits"],
                      a["history_item_buyers"], a["history_item_repeaters"], a["history_item_lines"])
    history.item_recent = a.get("history_item_recent")
    if "history_ignored__data" in a:
        history.ignored = csr("history_ignored")
    if "history_item_group" in a:  # POS products grouped by the menu item they are sold as
        history.item_group = a["history_item_group"].astype(np.int64)
        history.group_visits = csr("history_group_visits")
    if "tifu_neighbours" in a:
        history.tifu = TifuKnn(csr("tifu_vectors"), a["tifu_neighbours"].astype(np.int64))
    factors = Factors(*(a[f"factors_{n}"] for n in ("user_emb", "item_emb", "item_bias", "feature_emb", "feature_bias")))
    reranker = None
    if meta["reranker"] is not None:
        r = meta["reranker"]
        pad = len(FEATURES) - len(a["reranker_weights"])  # a model saved before features were appended
        w, mean, scale, coef = (np.concatenate([a[f"reranker_{n}"], np.full(pad, fill)]) for n, fill in
                                (("weights", 0.0), ("mean", 0.0), ("scale", 1.0), ("coef", 0.0)))
        reranker = Reranker(w, r["intercept"], mean, scale, coef, r["n_pairs"], r["n_customers"])
    dayparts = None
    if "dayparts_visits" in a:
        dayparts = DayPartProfile(csr("dayparts_counts"), a["dayparts_visits"], a["dayparts_item_counts"],
                                  len(a["customers"]))
        if "dayparts_group_counts__data" in a:  # saved since menu-item baskets are counted exactly
            dayparts.item_group = a["dayparts_item_group"].astype(np.int64)
            dayparts.group_counts = csr("dayparts_group_counts")
            dayparts.group_item_counts = a["dayparts_group_item_counts"]
    segments = None
    if "segments_values" in a:
        segments = SegmentTable([str(v) for v in a["segments_values"]], csr("segments_counts"))
    stage2 = None
    if meta.get("stage2") is not None:
        s2 = meta["stage2"]
        stage2 = Stage2(Forest.from_arrays(a, "stage2_"), float(s2["blend"]), int(s2["candidates"]),
                        float(s2["tifu_alpha"]), dict(s2["validation"]), float(s2.get("ignored_weight", 0.0)))
    pop = meta["popularity"]
    categories = [str(c) if has else None for c, has in zip(a["categories"], a["has_category"], strict=True)]
    return cls(version=meta["version"], config=config, customers=a["customers"], items=a["items"],
               categories=categories, available=a["available"], item_features=csr("item_features"),
               item_feature_names=meta["item_feature_names"], factors=factors, history=history,
               item_pop=a["item_pop"], item_rep=a["item_rep"], reranker=reranker,
               popularity=PopularityTable(pop["stores"], csr("popularity"), pop["has_hours"],
                                          config.cold_start_smoothing), meta=meta.get("meta") or {},
               dayparts=dayparts, segments=segments, stage2=stage2)


def scrub_customers(path: Path, customer_ids: Iterable[str]) -> int:
    """Remove customers from the model saved in ``path`` (a folder written by :func:`save_model`), in place.

    Each named customer's id becomes ``""`` (the model then treats them as unknown: cold start) and every
    row that describes them is zeroed: embedding, purchase history and recency, ignored picks, visits per
    day-part, TIFU vector and neighbour list. What stays are anonymous aggregates learnt with their
    purchases among everyone's (item popularity and factors, re-ranker weights) until the next training.
    ``arrays.npz`` is rewritten atomically (a temporary file renamed over it) under an exclusive lock, so
    concurrent scrubs and loads never see a half-written file.

    Returns:
        How many of the customers the model held (0 if none, or if ``path`` holds no saved model).

    Raises:
        OSError / ValueError: the folder exists but cannot be read or rewritten.
    """
    path = Path(path)
    file = path / "arrays.npz"
    ids = sorted({str(c) for c in customer_ids})
    if not ids or not file.is_file():
        return 0
    with open(path / ".scrub.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with np.load(file, allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        rows = np.flatnonzero(np.isin(a["customers"], ids))
        if not len(rows):
            return 0
        n_c = len(a["customers"])
        a["customers"] = a["customers"].copy()
        a["customers"][rows] = ""
        for name in CUSTOMER_ROWS:
            if name in a:
                a[name] = a[name].copy()
                a[name][rows] = 0
        if "tifu_neighbours" in a:
            a["tifu_neighbours"] = a["tifu_neighbours"].copy()
            a["tifu_neighbours"][rows] = -1
        stacked = {name: rows for name in CUSTOMER_SPARSE}
        for name in ("dayparts_counts", "dayparts_group_counts"):  # row d * n_customers + u for each day-part d
            if f"{name}__shape" in a:
                n_d = int(a[f"{name}__shape"][0]) // n_c
                stacked[name] = (np.arange(n_d)[:, None] * n_c + rows[None, :]).ravel()
        for name, zeroed in stacked.items():
            if f"{name}__data" in a:
                _zero_rows(a, name, zeroed)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".arrays-", suffix=".npz", delete=False) as out:
            np.savez(out, **a)
        os.chmod(out.name, file.stat().st_mode & 0o777)
        os.replace(out.name, file)
    return len(rows)


def _zero_rows(a: dict[str, np.ndarray], name: str, rows: np.ndarray) -> None:
    """Drop the entries of ``rows`` from the CSR matrix stored as ``a[name__*]`` (shape unchanged)."""
    m = sp.csr_matrix((a[f"{name}__data"], a[f"{name}__indices"], a[f"{name}__indptr"]),
                      shape=tuple(a[f"{name}__shape"]))
    keep = np.ones(m.shape[0], dtype=m.dtype)
    keep[rows] = 0
    m = sp.csr_matrix(sp.diags(keep) @ m)
    m.eliminate_zeros()
    a[f"{name}__data"], a[f"{name}__indices"], a[f"{name}__indptr"] = m.data, m.indices, m.indptr
