"""The benchmark across the eight challenges: python benchmark.py suite=smoke|standard|full

The same command as ``ude-benchmark`` and ``python -m ude.benchmark`` (:mod:`ude.benchmark.cli`),
kept at the top of the source tree. Examples:
    python benchmark.py                                   # the smoke suite (minutes)
    python benchmark.py suite=standard                    # resumes if interrupted
    python benchmark.py -m suite=standard shard=0,1 n_shards=2 hydra/launcher=local
    python benchmark.py suite=standard 'suite.systems=[goodwin]' 'suite.methods=[sindy,ude]'

Results go to ``benchmark_results/<suite>/results-*.jsonl`` (one row per cell; finished cells
are skipped on a rerun), the report to ``report.md``, ``results.csv`` and ``plots/``.
"""

from ude.benchmark.cli import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
