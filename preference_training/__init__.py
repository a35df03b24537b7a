"""The dataset-level preference trainer (DPO/IPO/... on a data set), used by `preference_similarity/` and `sorrybench/`.

    config.py       PreferenceTrainingConfig (every field documented there)
    selection.py    which pairs a run trains and evaluates on (similarity window, random subset, held-out split)
    logprobs.py     log-probs of whole splits, the reference pass and its on-disk cache
    trainer.py      train_preference_model: the run (steps, logging, checkpoints)
    evaluation.py   per-split evaluation statistics (eval_metrics/<split>/...)
    entanglement.py the gradient-entanglement probe of a run

Layer: imports `common` and `ches`; `common` and `ches` import nothing from here.
"""
