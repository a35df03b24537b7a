from ches.score_pairs import export_for_trl, lowest_k, quantile_window, score_pairs, within_threshold  # noqa: F401
