"""pytest-benchmark suites for stgcma-fast (`pytest bench/`) and the report renderer (`python -m bench.report`)."""
