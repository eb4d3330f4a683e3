"""Measure what the lm-eval startup hook costs a Python process that is not lm-eval.

Runs ``python -S -c ...`` N times each with the hook's .pth in an added site dir, with the PEP 829 entry point
(``lm_eval_prune.start``: resolved and called as Python 3.15 does, simulated here), and with an empty site dir
(interleaved, to share the machine's noise); then times the hook code alone with timeit.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from lm_eval_prune.harness import plugin


def main(runs: int = 30) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pth, start, empty = Path(tmp, "pth"), Path(tmp, "start"), Path(tmp, "empty")
        for folder in (pth, start, empty):
            folder.mkdir()
        (pth / plugin.PTH_NAME).write_text(plugin.PTH_LINE)
        (start / plugin.START_NAME).write_text(plugin.START_LINE)
        (start / f"{plugin.START_MODULE}.py").write_text(plugin.START_MODULE_SOURCE)
        # -S: no installed hook runs, only the one under test; no argument may mention lm-eval (the module name is
        # spelled backwards), as in a typical process
        code = "import site, sys; site.addsitedir(sys.argv[1])"
        call_start = f"; __import__({plugin.START_MODULE[::-1]!r}[::-1]).run()"  # what resolving the entry point does
        variants = {
            "with .pth hook": (pth, code),
            "with .start entry": (start, code + call_start),
            "without": (empty, code),
        }
        times: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(runs):
            for label, (folder, command) in variants.items():
                begin = time.perf_counter()
                subprocess.run([sys.executable, "-S", "-c", command, str(folder)], check=True)
                times[label].append(time.perf_counter() - begin)
    line = timeit.timeit(lambda: exec(plugin.PTH_LINE, {}), number=2000) / 2000
    full = timeit.timeit(lambda: exec(plugin.HOOK_CODE, {"sys": sys}), number=2000) / 2000
    base = statistics.median(times["without"])
    for label, values in times.items():
        median = statistics.median(values)
        extra = "" if label == "without" else f" ({(median - base) * 1e3:+.2f} ms)"
        print(f"python -c ({label}): median {median * 1e3:.2f} ms over {runs} runs{extra}")
    print(f"the .pth line alone (a process without lm-eval in its arguments): {line * 1e6:.1f} us")
    print(f"the exact test alone (an argument mentions lm-eval): {full * 1e6:.1f} us")


if __name__ == "__main__":
    main()
