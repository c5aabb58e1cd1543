"""
Benchmark: `trackermail import-sources` of a generated 60,000-entry Sources
index, on SQLite and on PostgreSQL (TRACKERMAIL_BENCH_PG, default
postgresql:///test; a scratch database is created and dropped).

Prints a table and writes bench/results/import_sources.json.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import scratch_pg_database  # noqa: E402

N = int(os.environ.get("BENCH_SOURCES", "60000"))


def make_sources(path: str, n: int) -> None:
    with gzip.open(path, "wt") as f:
        for i in range(n):
            f.write(
                f"Package: pkg{i}\nBinary: pkg{i}, libpkg{i}-1, pkg{i}-doc\n"
                f"Version: 1.{i}-1\nMaintainer: M <m{i}@example.org>\n"
                f"Architecture: any\nFiles:\n d41d8 1234 pkg{i}_1.{i}-1.dsc\n\n"
            )


def cli(db: str, *args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trackermail.cli", "--database", db, *args],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def pg_database():
    return scratch_pg_database("trackermail_bench")


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = os.path.join(tmp, "Sources.gz")
        make_sources(sources, N)
        backends = [("sqlite", f"sqlite:///{tmp}/bench.sqlite", None)]
        try:
            dsn, drop = pg_database()
            backends.append(("postgresql", dsn, drop))
        except Exception as e:
            print(f"PostgreSQL unavailable, skipped: {e}", file=sys.stderr)
        for name, db, drop in backends:
            try:
                cli(db, "migrate")
                first = cli(db, "import-sources", sources)
                again = cli(db, "import-sources", sources)
                results.append({"backend": name, "entries": N,
                                "first_import_s": round(first, 2),
                                "reimport_s": round(again, 2)})
            finally:
                if drop:
                    drop()
    print(f"{'backend':<12} {'entries':>8} {'first import s':>15} {'re-import s':>12}")
    for r in results:
        print(f"{r['backend']:<12} {r['entries']:>8} {r['first_import_s']:>15} "
              f"{r['reimport_s']:>12}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "import_sources.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
