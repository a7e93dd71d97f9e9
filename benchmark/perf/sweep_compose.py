"""Composing a large sweep: ``python -m benchmark.perf.sweep_compose [--cells 2000] [--alone 20]``.

Times :func:`benchmark.sweeps.spec.validate_cells` (every cell's config composed, with what cells share composed
once) on a grid of ``--cells`` cells (2 methods x seeds, the smoke sweep's settings), against composing one config
alone (``compose_config`` then the run directory, as a sweep did for every cell before), over ``--alone`` cells.
Prints the seconds per cell of each, their ratio, the resident-memory growth over the grid, and what 10,000 cells
would take at the measured rate (target: under 2 minutes).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _rss_mb() -> float:
    """Current resident memory in MiB (Linux /proc; the peak where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000, help="cells in the grid (default 2000)")
    parser.add_argument("--alone", type=int, default=20, help="cells composed one by one, uncached (default 20)")
    args = parser.parse_args(argv)
    from benchmark.sweeps.spec import cell_run_dir, expand_cells, load_spec, validate_cells

    smoke = yaml.safe_load((Path(__file__).resolve().parents[2] / "sweeps" / "smoke.yaml").read_text())
    seeds = -(-args.cells // 2)
    spec_data = {"name": "compose-bench", "cluster": "cpu", "overrides": smoke["overrides"],
                 "grid": {"method": ["proxy_anchor", "multi_similarity"], "seed": list(range(seeds))}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "compose-bench.yaml"
        path.write_text(yaml.safe_dump(spec_data))
        cells = expand_cells(load_spec(path), Path(tmp) / "runs")
        cell_run_dir(cells[0].overrides)  # imports and registration, outside both timings
        t0 = time.perf_counter()
        for cell in cells[: args.alone]:
            cell_run_dir(cell.overrides)
        alone = (time.perf_counter() - t0) / args.alone
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        validate_cells(cells)
        shared = (time.perf_counter() - t0) / len(cells)
        rss1 = _rss_mb()
    print(f"composing one config alone: {alone * 1000:8.1f} ms/cell (over {args.alone} cells)")
    print(f"a sweep's cells (shared)  : {shared * 1000:8.1f} ms/cell (over {len(cells)} cells)")
    print(f"ratio alone / shared      : {alone / shared:8.1f}x")
    print(
        f"memory over the grid      : {rss0:.0f} -> {rss1:.0f} MiB ({(rss1 - rss0) * 1024 / len(cells):.1f} KiB/cell)"
    )
    print(f"10,000 cells would take   : {shared * 10_000:.0f} s (target < 120 s; alone: {alone * 10_000:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
