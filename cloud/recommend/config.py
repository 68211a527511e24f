"""Recommender settings (one frozen dataclass, stored with every saved model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RecommenderConfig:
    """Hyper-parameters of the Dangol hybrid recommender.

    LightFM part (Kula 2015, "Metadata Embeddings for User and Item Cold-start Recommendations",
    arXiv:1507.08439). Defaults were chosen on a validation split carved from the training period
    (Ta-Feng, train before 2001-01-01, validate on January, 200 best sellers; the February test month
    unseen): hybrid precision@10 / recall@10 were 0.1815 / 0.2591 with 30 epochs, 0.1812 / 0.2604 with 15,
    0.1819 / 0.2621 with 32 components, 0.1812 / 0.2606 with a 60-day recency half-life, and 0.1818 /
    0.2606 without the category cap (cap 3 costs < 0.001). 15 epochs halve the training time at equal accuracy.
    With the TIFU-KNN and trend features (issue 12; validation: train before 2001-01-04, validate on the 28 days
    to 2001-02-01) 32 components gave 0.1766 vs 0.1773 with 64 (within LightFM's ±0.001 run-to-run spread) in
    0.6 of the time; the warm-started final fit (``refit_epochs`` 5) 0.1773 vs 0.1770 for a fresh 15-epoch fit.
    On Complete Journey (100 best-selling product categories, train < 2017-09-01, validate Sep-Oct) a flat
    cap of 3 per department cost 0.06 precision@10 (GROCERY is 60 % of the items); letting a category
    fill its share of the list (``category_share_factor``) 1.0 / 1.5 gave 0.6811 / 0.6852 (own-frequency
    0.6683; Ta-Feng 0.1815 / 0.1817).

    Attributes:
        no_components: embedding size d of LightFM.
        loss: LightFM loss, ``"warp"`` (Weston et al. 2011, WSABIE), ``"bpr"``, ``"warp-kos"`` or ``"logistic"``.
        epochs: passes over the interactions.
        refit_epochs: the final LightFM fit on all training data continues from the re-ranker's fit on the
            earlier part (warm start) for this many passes; 0 = a fresh fit of ``epochs`` passes.
        learning_rate: SGD/Adagrad step size.
        item_alpha / user_alpha: L2 penalty on the feature embeddings (per sample).
        max_sampled: WARP's maximum number of negatives drawn per positive.
        num_threads: OpenMP threads of LightFM's fit. 1 (default): every training on the same data gives the same
            model and menus; with more, LightFM's lock-free parallel SGD ("Hogwild", Recht et al. 2011) makes each
            fit differ (two 2-thread fits on Complete Journey's 100 categories gave 487 of the 577 households another
            top-10). LightFM is a small part of the training time (see ``cloud/recommend/README.md``).
        random_state: seed of LightFM's initialisation and of the re-ranker's negative sampling.
        price_bands: number of price quantile bands used as item features (``price:1/4`` ...).

    Repeat-purchase re-ranker (a logistic regression over per-(customer, item) features, fitted on the
    last ``rerank_window_days`` of the training data; see :mod:`dangol_cloud.recommend.history`):

    Attributes:
        rerank: if False, rank by the LightFM score alone ("LightFM alone" in the evaluation).
        recency_half_life_days: half-life of the exponential decay of past purchases (days).
        rerank_window_days: length of the label window carved from the END of the training data.
        rerank_windows / rerank_window_stride_days: the re-ranker and the second stage are fitted on this many
            label windows pooled, each ``rerank_window_stride_days`` earlier than the next (features of a window
            from the purchases before it); windows with too little history before them are skipped.
        rerank_max_customers: at most this many customers (sampled) are used to fit the re-ranker.
        rerank_negatives: never-bought items sampled per customer (weighted by the inverse sampling rate).
        tifu: give the re-ranker the two TIFU-KNN parts (Hu et al. 2020) as features: the customer's
            time-decayed basket-group vector and the mean vector of the ``tifu_neighbours`` nearest customers.
        item_trend: give the re-ranker the item's trend (share of the last two weeks' purchases vs all).
        tifu_group_size / tifu_r_b / tifu_r_g / tifu_neighbours: TIFU-KNN's m, within-group decay, group decay
            and k; the values TIFU-KNN alone scored best with on the Ta-Feng validation split (train before
            2001-01-04, validate on the 28 days to 2001-02-01): m 7, r_b 1.0, r_g 0.6, k 300.
        tifu_max_dims: with a larger catalogue, neighbour distances use the dot products over this many heaviest
            items only (see :meth:`~dangol_cloud.recommend.baselines.TifuKnn.fit`).

    Second stage (:mod:`dangol_cloud.recommend.scoring`, :mod:`dangol_cloud.recommend.stage2`): boosted trees
    re-score each known customer's best stage-1 items, blended with the stage-1 logit by a weight chosen on
    held-out customers of the training window.

    Attributes:
        stage2: fit the second stage (False = the logistic regression alone).
        stage2_candidates: M, the stage-1 items per customer the forest re-scores.
        stage2_holdout: share of the window's customers held out to choose the blend weight.
        stage2_blends: the blend weights λ tried (0 = stage 1 alone).
        stage2_objective: the forest's LightGBM objective: ``"lambdarank"`` (orders each customer's candidates,
            LambdaMART) or ``"binary"`` (log-loss per pair).
        stage2_iterations / stage2_learning_rate / stage2_leaves / stage2_min_leaf: the forest's boosting
            rounds, shrinkage, leaves per tree and minimum pairs per leaf.
        stage2_tifu_alpha: α of the whole TIFU-KNN score feature ``α u + (1-α) neighbours`` (TIFU-KNN's tuned
            value on the Ta-Feng validation split, 0.4).
        ignored_weights: the weights β tried for shown-and-ignored picks (feedback, soft negatives): the final
            score loses β × the customer's decayed count of ignored showings of the item; the β with the best
            precision@10 on the held-out customers is kept (0 on a tie, so only when it helps).

    The forest's size was chosen on the validation splits (Ta-Feng: train before 2001-01-04, validate on the 28
    days to 2001-02-01, 200 items; Complete Journey: train before 2017-09-01, validate on Sep-Oct, 100 categories;
    precision@10, the test periods unseen): stage 1 alone 0.1769 / 0.6852; 100 trees of 15 leaves (≥ 100 pairs per
    leaf) 0.1743 / 0.6874 — the held-out customers of the window preferred it (0.1875 at λ 1) but it did not carry
    over to the next weeks; 50 trees of 7 leaves (≥ 500) 0.1792 / 0.6866 (λ 0.75 / 1); 50 of 4 leaves (≥ 1000)
    0.1787 on Ta-Feng. The 7-leaf setting is kept (Ta-Feng best sellers: GP-TopFreq 0.1729, TIFU-KNN 0.1719).
    Those forests were scikit-learn's binary log-loss trees. LightGBM's LambdaMART objective (ordering each
    customer's candidates; same size) beat them in each of 4 seeds on both validation splits: Ta-Feng 0.1784-0.1800
    vs 0.1774-0.1791 (explore recall 0.074-0.075 vs 0.062-0.070), Complete Journey 0.6866-0.6892 vs 0.6848-0.6874;
    LightGBM's binary objective 0.1784 / 0.6870. With it, 100 trees, 15 leaves, ≥ 100 per leaf and 30 or 80
    candidates all stayed within ±0.002 of the kept setting over 2 seeds. Two pooled label windows
    (``rerank_windows`` 2, stride 14 days) gave 0.1772 / 0.6850 vs 0.1777 / 0.6874 with one, 3 windows 0.6850 on
    Complete Journey: one window is kept. Choosing λ by cross-fitting (4 folds of the window's customers: each scored
    by trees fitted on the other three, the final forest on all) instead of one held-out quarter gave, as the mean
    over seeds 1-3 (Ta-Feng) / 1-4 (Complete Journey), 0.1791 vs 0.1795 and 0.6862 vs 0.6863 on the same splits:
    no gain for three more forest fits, not kept.

    Day-parts (:mod:`dangol_cloud.recommend.dayparts`):

    Attributes:
        daypart_weight: γ, weight of the day-part log-ratio added to a known customer's scores when
            :meth:`Recommender.recommend` is given an hour (0 = hour-blind menus).
        daypart_smoothing: k, pseudo-count shrinking a customer's own day-part profile towards the item's.
            On Complete Journey (100 best-selling categories, train before 2017-09-01, validate on Sep-Oct,
            precision@10 per (customer, day-part), times in the shops' local time — US Eastern, see
            :data:`dangol_cloud.importers.DATASET_TIMEZONES`): hour-blind 0.4673; γ 1 with k 5 / 20 / 50 / 200
            gave 0.4654 / 0.4690 / 0.4685 / 0.4681, γ 0.5 with k 20 0.4685, γ 2 with k 20 / 50 0.4666 / 0.4672:
            grocery categories hardly depend on the hour, the gain is within noise. γ 1 (Bayes' rule) with k 20, the
            best on validation, is kept. (Earlier tuning read the data's UTC times as local: hour-blind 0.5011,
            γ 1 k 50 0.5019, kept then.)

    Serving:

    Attributes:
        max_per_category: at most this many items of one category in a top-N list (None = no cap).
        category_share_factor: a category holding share s of the available items may fill
            ``ceil(factor · n · s)`` places of a list of n when that exceeds ``max_per_category``.
        new_item_slots: places at the end of a known customer's list kept for items nobody has bought yet
            (new menu items), filled only by those whose LightFM score from metadata is high enough.
        new_item_min_z: minimum per-customer LightFM z-score (sd above the catalogue mean) for that slot.
        segment_smoothing: pseudo-count k shrinking a segment's purchase shares towards the store/hour
            popularity in the segment-aware cold start (:mod:`dangol_cloud.recommend.segments`).
        cold_start_smoothing: pseudo-count that shrinks the time-of-day/store popularity of the cold-start
            list towards the overall popularity (additive smoothing, in purchases).
    """

    no_components: int = 32
    loss: str = "warp"
    epochs: int = 15
    refit_epochs: int = 5
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    num_threads: int = 1
    random_state: int = 42
    price_bands: int = 4
    rerank: bool = True
    recency_half_life_days: float = 30.0
    rerank_window_days: int = 28
    rerank_windows: int = 1
    rerank_window_stride_days: int = 14
    rerank_max_customers: int = 6000
    rerank_negatives: int = 100
    tifu: bool = True
    item_trend: bool = True
    tifu_group_size: int = 7
    tifu_r_b: float = 1.0
    tifu_r_g: float = 0.6
    tifu_neighbours: int = 300
    tifu_max_dims: int = 128
    stage2: bool = True
    stage2_candidates: int = 50
    stage2_holdout: float = 0.25
    stage2_blends: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    stage2_objective: str = "lambdarank"
    stage2_iterations: int = 50
    stage2_learning_rate: float = 0.1
    stage2_leaves: int = 7
    stage2_min_leaf: int = 500
    stage2_tifu_alpha: float = 0.4
    ignored_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    daypart_weight: float = 1.0
    daypart_smoothing: float = 20.0
    max_per_category: int | None = 3
    category_share_factor: float = 1.5
    new_item_slots: int = 1
    new_item_min_z: float = 1.0
    cold_start_smoothing: float = 50.0
    segment_smoothing: float = 200.0

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RecommenderConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})
