"""The engine: one run from its config to its record.

``run`` (compose -> train or resume -> evaluate -> record), ``trainer`` (the loop: optimiser, schedule, sampler,
checkpoints, model selection), ``encoder`` (backbone + pooling + head), ``pipeline`` (transforms, m-per-class
sampler), ``distributed`` (DDP helpers), ``records`` (the record schema and atomic writers), ``record_writer``
(assembles ``record.json`` from what the trainer hands it), ``protocols`` (``protocol=``: which protocol a run uses
and its values for the dataset), ``listing`` (``python -m benchmark list``) and ``checks`` (config values, device and
output directory, checked before anything runs or is written).
"""
