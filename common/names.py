"""Names shared by several layers, defined once (torch-free): model dtypes and the similarity measures.

DTYPE_NAMES: the weight dtypes a config or script flag may name ("float32", "bfloat16", "float16").
SIMILARITY_MEASURE_NAMES: the per-pair measures of a similarity results file (`ches/results_file.py`), in the
    reference's order: CHES (sum of inner products), length-normalised CHES, minus the normalised edit distance of
    the two responses' token ids, inner product of the last hidden embeddings.
"""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16")
SIMILARITY_MEASURE_NAMES = ("ches_scores", "ln_ches_scores", "minus_normalized_edit_distances",
                            "last_hidden_embedding_inner_prods")
