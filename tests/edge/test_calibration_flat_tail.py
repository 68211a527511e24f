"""A calibration table whose exceedance never falls (too few impostor pairs to fall a decade, as on a small LFW
subset) has no tail to extrapolate: the threshold beyond it refuses everyone (1.0), with no division by zero."""

import warnings

from dangol_edge.calibration import ImpostorTail


def test_a_flat_tail_gives_the_refuse_all_threshold_without_a_warning():
    tail = ImpostorTail.from_dict({"scores": [0.1, 0.2, 0.3], "exceed": [0.01, 0.01, 0.01], "pairs": 100})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tail.threshold(1e-4, 10) == 1.0
        assert tail.threshold(0.5, 1) == 0.1   # within the table: its first score
