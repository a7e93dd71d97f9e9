"""Sweeps: grids of runs on SLURM (through submitit) or on this machine.

``spec`` (sweep specs -> cells), ``cluster`` (all cluster knowledge: profiles, sbatch parameters), ``manifest``
(the sweep directory's manifest and git checks), ``submit`` (the job-array submission and the submitit job),
``local`` (the same cells as local processes) and ``status`` (per-cell state from records, sacct and logs).
"""
