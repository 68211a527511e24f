"""Dangol's recommender: LightFM with item features + a repeat-purchase re-ranker, cold start, evaluation.

Public API::

    from dangol_cloud.recommend import train, evaluate, Recommender, RecommenderConfig, Pick
    model = train(interactions, items)                     # pandas frames, see .data
    model.recommend(["01607000"], n=10, available={...})   # {customer: [Pick(item, score, reasons)]}
    path = model.save(Path("var/models")); Recommender.load(path)
    print(evaluate(interactions, items, cut=datetime(2001, 2, 1), top_items=200).to_table())
"""

from .config import RecommenderConfig
from .data import (clean_interactions, clean_items, frames_from_rows, load_purchases, load_segments,
                   restrict_to_top_items)
from .evaluate import EvaluationReport, evaluate, ranking_metrics, repeat_explore_recall
from .model import Pick, Recommender, train

__all__ = [
    "EvaluationReport",
    "Pick",
    "Recommender",
    "RecommenderConfig",
    "clean_interactions",
    "clean_items",
    "evaluate",
    "frames_from_rows",
    "load_purchases",
    "load_segments",
    "ranking_metrics",
    "repeat_explore_recall",
    "restrict_to_top_items",
    "train",
]
