"""Dataset readers (the engine side of the dataset cards in ``datasets/``)."""

from benchmark.data.base import (
    DatasetError,
    DatasetSplits,
    SplitData,
    carve_validation,
    list_cards,
    load_card,
    load_dataset,
    register_reader,
)

__all__ = [
    "DatasetError",
    "DatasetSplits",
    "SplitData",
    "carve_validation",
    "list_cards",
    "load_card",
    "load_dataset",
    "register_reader",
]
