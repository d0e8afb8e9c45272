"""python -m ls_bench.report: the same command as ls-bench-report."""

from ls_bench.report import main

main()
