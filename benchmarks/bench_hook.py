"""Measure what the lm-eval startup hook (lm_eval_prune.pth) costs a Python process that is not lm-eval.

Runs ``python -c pass`` N times with the hook's directory added as a site dir and N times with an empty one
(alternating, to share the machine's noise), and times the hook line alone with timeit.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from lm_eval_prune.harness.plugin import PTH_LINE


def main(runs: int = 30) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hooked, empty = Path(tmp, "hooked"), Path(tmp, "empty")
        hooked.mkdir()
        empty.mkdir()
        (hooked / "lm_eval_prune.pth").write_text(PTH_LINE)
        times: dict[str, list[float]] = {"with hook": [], "without": []}
        for _ in range(runs):
            for label, folder in (("with hook", hooked), ("without", empty)):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", f"import site; site.addsitedir({str(folder)!r})"], check=True)
                times[label].append(time.perf_counter() - start)
    line = timeit.timeit(lambda: exec(PTH_LINE.split("; ", 1)[1], {"sys": sys}), number=2000) / 2000
    for label, values in times.items():
        print(f"python -c pass ({label}): median {statistics.median(values) * 1e3:.2f} ms over {runs} runs")
    print(
        f"difference of medians: {(statistics.median(times['with hook']) - statistics.median(times['without'])) * 1e3:.2f} ms"
    )
    print(f"the hook line alone (not an lm-eval process): {line * 1e6:.1f} us")


if __name__ == "__main__":
    main()
