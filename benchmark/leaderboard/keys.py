"""The leaderboard's shared constants: the metrics a record holds and how rows are grouped into tables.

Every other leaderboard module imports these from here (and nothing from each other's entry point), so the
package has no import cycle.
"""

from __future__ import annotations

from benchmark.engine.records import METRIC_KEYS as METRICS

RECALL_KS = tuple(int(m.split("@")[1]) for m in METRICS if m.startswith("recall@"))
# One table per (protocol, selection rule); within it, rows compare inside (dataset, backbone, embedding size).
TABLE_KEYS = ["protocol_hash", "selection_rule"]
COMPARE_KEYS = [*TABLE_KEYS, "dataset", "backbone", "embedding_dim"]
GROUP_KEYS = [*COMPARE_KEYS, "method", "config_hash"]

__all__ = ["COMPARE_KEYS", "GROUP_KEYS", "METRICS", "RECALL_KS", "TABLE_KEYS"]
