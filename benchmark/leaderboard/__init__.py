"""The leaderboard: run records -> tables and figures.

``gather`` (read and aggregate records; the ``leaderboard`` command), ``keys`` (the metric and grouping constants
every other module reads), ``render`` (Markdown, LaTeX, CSV), ``html`` (the sortable page), ``figures`` (seaborn)
and ``reported`` (the numbers papers published, ``leaderboard/reported/*.yaml``).
"""
