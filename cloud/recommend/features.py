"""LightFM feature matrices for items and customers.

Following Kula (2015, §3), an item's representation is the sum of the embeddings of its features;
every item carries an identity feature plus metadata features, so an item with no purchases yet (a new
menu item) is still scored through its metadata. Rows are normalised to sum 1 (the default of
``lightfm.data.Dataset.build_item_features``).

Item feature names: ``item:<id>``, ``category:<c>``, ``tag:<t>``, ``price:<b>/<B>`` (quantile band b of B).
Customer feature names: ``customer:<id>`` plus ``<column>:<value>`` from an optional customer table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


def price_bands(prices: pd.Series, n_bands: int) -> pd.Series:
    """Quantile band (1..n_bands, as str ``"b/B"``) of each price; NaN prices map to None.

    Bands are the ``n_bands``-quantiles of the known prices (``pandas.qcut``, duplicate edges merged).
    """
    out = pd.Series([None] * len(prices), index=prices.index, dtype=object)
    known = prices.dropna()
    if n_bands < 2 or known.nunique() < 2:
        return out
    codes = pd.qcut(known.rank(method="first"), q=n_bands, labels=False, duplicates="drop")
    bands = int(codes.max()) + 1
    out.loc[known.index] = [f"{int(c) + 1}/{bands}" for c in codes]
    return out


def _matrix(rows: list[list[str]]) -> tuple[sp.csr_matrix, list[str]]:
    names: dict[str, int] = {}
    indptr, indices = [0], []
    for feats in rows:
        for f in dict.fromkeys(feats):  # unique, order kept
            indices.append(names.setdefault(f, len(names)))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    m = sp.csr_matrix((data, np.array(indices, dtype=np.int32), np.array(indptr)), shape=(len(rows), len(names)))
    sums = np.asarray(m.sum(axis=1)).ravel()
    m = sp.diags(1.0 / np.maximum(sums, 1.0)).astype(np.float32) @ m
    return m.tocsr().astype(np.float32), list(names)


def item_feature_matrix(items: pd.DataFrame, n_price_bands: int, identity: np.ndarray | None = None
                        ) -> tuple[sp.csr_matrix, list[str]]:
    """Item features for LightFM.

    Args:
        items: cleaned items frame (see :func:`~dangol_cloud.recommend.data.clean_items`), row order = item index.
        n_price_bands: number of price quantile bands (0 or 1 = no price feature).
        identity: ``(n_items,)`` bool, which items get an identity feature ``item:<id>`` (default all).
            Items nobody has bought yet should get none: an untrained identity embedding is random noise,
            while metadata alone places a new item where similar items are (Kula 2015, §3, §4.3).
            An item with neither identity nor metadata keeps its identity feature.

    Returns:
        ``(X, names)``: X is ``(n_items, n_features)`` float32 CSR with rows summing to 1; ``names[j]``
        is feature j's name.
    """
    bands = price_bands(items["price"], n_price_bands)
    rows = []
    if identity is None:
        identity = np.ones(len(items), bool)
    for item, cat, tags, band, ident in zip(items["item"], items["category"], items["tags"], bands, identity,
                                            strict=True):
        feats = [f"item:{item}"] if ident or (cat is None and not tags and band is None) else []
        if cat is not None:
            feats.append(f"category:{cat}")
        feats.extend(f"tag:{t}" for t in tags)
        if band is not None:
            feats.append(f"price:{band}")
        rows.append(feats)
    return _matrix(rows)


def customer_feature_matrix(
    customers: np.ndarray, customer_features: pd.DataFrame | None
) -> tuple[sp.csr_matrix | None, list[str]]:
    """Customer features for LightFM (identity plus optional metadata), or ``(None, [])`` without metadata.

    Args:
        customers: ``(n_customers,)`` str array, row order = customer index.
        customer_features: frame with a ``customer`` column and either a ``features`` column of
            ``list[str]`` or any other columns, each turned into ``"<column>:<value>"`` (empty/NaN skipped),
            e.g. Ta-Feng ``AGE_GROUP``/``PIN_CODE`` or Complete Journey demographics.

    Returns:
        ``(X, names)`` with X ``(n_customers, n_features)`` float32 CSR, rows summing to 1.
    """
    if customer_features is None or len(customer_features) == 0:
        return None, []
    table = customer_features.copy()
    table["customer"] = table["customer"].astype(str)
    table = table.drop_duplicates("customer").set_index("customer")
    extra: dict[str, list[str]] = {}
    for cust, rec in table.iterrows():
        if "features" in table.columns:
            feats = [str(f) for f in rec["features"]] if isinstance(rec["features"], (list, tuple)) else []
        else:
            feats = [f"{col}:{val}" for col, val in rec.items() if not pd.isna(val) and str(val) != ""]
        extra[str(cust)] = feats
    rows = [[f"customer:{c}", *extra.get(str(c), [])] for c in customers]
    return _matrix(rows)
