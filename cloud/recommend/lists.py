"""Building a known customer's list from scores: availability, the category cap, the new-item slot.

Mixed into :class:`~dangol_cloud.recommend.model.Recommender`; uses its ``config``, ``_category_code``
(``(n_items,)`` int64, -1 = no category) and ``_new`` (``(n_items,)`` bool, items nobody bought before training).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ListsMixin"]


class ListsMixin:
    """Top-n lists under the category cap, with an exploration slot for new menu items."""

    def _caps(self, mask: np.ndarray, n: int) -> np.ndarray | None:
        """Per category code, the most items of that category a list of ``n`` may hold (None = no cap).

        ``cap_c = max(max_per_category, ceil(category_share_factor · n · share_c))`` where ``share_c`` is the
        category's share of the available items: a category that IS most of the menu (Complete Journey's
        GROCERY department holds 60 of the 100 best sellers) may fill its share of the list.
        """
        base = self.config.max_per_category
        if base is None:
            return None
        codes = self._category_code[mask & (self._category_code >= 0)]
        n_codes = int(self._category_code.max()) + 1 if len(self._category_code) else 0
        share = np.bincount(codes, minlength=n_codes) / max(int(mask.sum()), 1)
        return np.maximum(base, np.ceil(self.config.category_share_factor * n * share - 1e-9)).astype(np.int64)

    def _top(self, order: np.ndarray, n: int, caps: np.ndarray | None) -> list[int]:
        """First ``n`` of ``order`` (item indices, best first) with at most ``caps[c]`` items of category c."""
        if caps is None:
            return [int(k) for k in order[:n]]
        picked, used = [], {}
        for k in order:
            code = self._category_code[k]
            if code >= 0:
                if used.get(code, 0) >= caps[code]:
                    continue
                used[code] = used.get(code, 0) + 1
            picked.append(int(k))
            if len(picked) == n:
                break
        return picked

    def _ranked(self, scores: np.ndarray, mask: np.ndarray, n: int) -> list[list[int]]:
        """Per row of ``scores`` ``(rows, n_items)``, the best ``n`` available item indices under the category cap.

        Only the best ``4 n + 20`` items of a row are sorted (``argpartition``); a row whose cap leaves
        fewer than ``n`` of them is re-ranked over the whole catalogue.
        """
        scores = np.where(mask[None, :], scores, -np.inf)
        n_valid = int(mask.sum())
        if n_valid == 0 or n <= 0:
            return [[] for _ in range(len(scores))]
        caps = self._caps(mask, n)
        capped = caps is not None

        def order_of(block: np.ndarray, width: int) -> np.ndarray:
            if width < block.shape[1]:
                part = np.argpartition(-block, width - 1, axis=1)[:, :width]
            else:
                part = np.tile(np.arange(block.shape[1]), (len(block), 1))
            part_scores = np.take_along_axis(block, part, axis=1)
            return np.take_along_axis(part, np.argsort(-part_scores, axis=1, kind="stable"), axis=1)

        width = min(n_valid, 4 * n + 20 if capped else n)
        out = []
        for j, row in enumerate(order_of(scores, width)):
            picked = self._top(row[np.isfinite(scores[j, row])], n, caps)
            if len(picked) < min(n, n_valid) and width < n_valid:
                row = order_of(scores[j:j + 1], n_valid)[0]
                picked = self._top(row[np.isfinite(scores[j, row])], n, caps)
            out.append(picked)
        return out

    def _with_new_items(self, ranked: list[list[int]], z: np.ndarray, mask: np.ndarray, n: int) -> list[list[int]]:
        """Give up to ``config.new_item_slots`` places at the end of each list to available items nobody has
        bought yet whose LightFM z-score (from metadata alone) is at least ``config.new_item_min_z``.

        A re-ranker fitted on past purchases cannot rate an item without purchases, so new menu items
        get this explicit exploration slot (best LightFM match first); the category cap still holds.
        """
        slots = min(self.config.new_item_slots, n)
        candidates = self._new & mask
        if slots <= 0 or not candidates.any():
            return ranked
        new_cols = np.flatnonzero(candidates)
        caps = self._caps(mask, n)
        out = []
        for j, picked in enumerate(ranked):
            zs = z[j, new_cols]
            good = [int(c) for c in new_cols[np.argsort(-zs, kind="stable")] if z[j, c] >= self.config.new_item_min_z]
            if not good:
                out.append(picked)
                continue
            head = [k for k in picked if k not in good][: max(n - slots, 0)]
            used: dict[int, int] = {}
            for k in head:
                used[self._category_code[k]] = used.get(self._category_code[k], 0) + 1
            added = []
            for c in good:
                code = self._category_code[c]
                if code >= 0 and caps is not None and used.get(code, 0) >= caps[code]:
                    continue
                used[code] = used.get(code, 0) + 1
                added.append(c)
                if len(added) == slots:
                    break
            rest = [k for k in picked if k not in head and k not in added]
            out.append((head + added + rest)[:n] if len(head) + len(added) < n else head + added)
        return out
