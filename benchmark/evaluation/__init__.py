"""Evaluation: the protocol's metrics (``metrics``: Recall@K, MAP@R, R-Precision, NMI), exact chunked kNN (``knn``)
and the class-disjoint linear attribute probe (``attribute_probe``). Methods change what is embedded, never how it
is scored."""
