"""The offline evaluation's report (:func:`~dangol_cloud.recommend.evaluate.evaluate`): its rows of metrics per
method and how they are printed (a ``rich`` table for the terminal, GitHub-flavoured Markdown for the README)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["EvaluationReport"]

@dataclass
class EvaluationReport:
    """Offline metrics per method; ``rows`` are dicts with method, precision@k, recall@k, MAP@k,
    coverage, n_customers. ``train_seconds`` / ``score_seconds`` time the shipped model's training and
    its scoring of every evaluated customer. ``comparison`` (with baselines): the shipped model's precision@k over
    the best baseline row's, ``{"baseline", "ratio", "low", "high"}`` (95 % paired bootstrap interval)."""

    k: int
    cut: datetime
    n_items: int
    n_train_interactions: int
    rows: list[dict] = field(default_factory=list)
    train_seconds: float = float("nan")
    score_seconds: float = float("nan")
    model_version: str = ""
    notes: list[str] = field(default_factory=list)
    comparison: dict | None = None

    @property
    def columns(self) -> list[str]:
        k = self.k
        return ["method", f"precision@{k}", f"recall@{k}", f"MAP@{k}", f"repeat R@{k}", f"explore R@{k}", "coverage",
                "n_customers", "train s", "score s"]

    def _cells(self, row: dict) -> list[str]:
        return ([row["method"]] + [f"{row[c]:.4f}" for c in self.columns[1:7]] + [str(row["n_customers"])]
                + [f"{row.get(c, float('nan')):.1f}" for c in ("train s", "score s")])

    def _caption(self) -> str:
        return "; ".join([f"cut {self.cut:%Y-%m-%d}, {self.n_items} items, k={self.k}; train s / score s = seconds to "
                          "fit (incl. tuning on the validation split) / to rank every evaluated customer", *self.notes])

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown table with a one-line caption underneath."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self._cells(r)) + " |" for r in self.rows]
        return "\n".join(lines) + f"\n\n{self._caption()}\n"

    def to_table(self) -> str:
        """The table rendered with ``rich`` (plain text, no colour codes)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Offline evaluation", caption=self._caption())
        for c in self.columns:
            table.add_column(c, justify="left" if c == "method" else "right")
        for r in self.rows:
            table.add_row(*self._cells(r))
        console = Console(width=160, record=True, force_terminal=False, color_system=None)
        with console.capture() as cap:
            console.print(table)
        return cap.get()

    def row(self, method: str) -> dict:
        """The row of ``method`` (KeyError if absent)."""
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(method)
