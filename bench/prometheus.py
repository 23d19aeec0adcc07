"""Benchmark the Prometheus converter: answer body -> frames -> /api/ds/query JSON, in-process.

Shapes: one series of 1e6 points (float timestamps, string samples), the same with one `+Inf` sample (the
rewrite before the typed decode), 1000 series of 1000 points, and 1e5 points whose samples the typed decode
refuses (hex floats: the exact, slower path). Each is run --rounds times; the median is printed.

    .venv/bin/python bench/prometheus.py
    .venv/bin/python bench/prometheus.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from gateway.backends.prometheus import read_result
from gateway.frames import encode_json


def _matrix(series: int, points: int, value: Callable[[int], str]) -> bytes:
    samples = ",".join(f'[{1700000000 + n}.123,"{value(n)}"]' for n in range(points))
    items = ",".join(f'{{"metric":{{"__name__":"m","i":"{s}"}},"values":[{samples}]}}' for s in range(series))
    return ('{"status":"success","data":{"resultType":"matrix","result":[' + items + "]}}").encode()


def main() -> None:
    """Print the median convert and encode times of each shape."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    shapes = {
        "1 x 1e6 points": _matrix(1, 1_000_000, lambda n: f"{n}.5"),
        "1 x 1e6 points, one +Inf": _matrix(1, 1_000_000, lambda n: "+Inf" if n == 7 else f"{n}.5"),
        "1000 x 1000 points": _matrix(1000, 1000, str),
        "1 x 1e5 hex samples (exact path)": _matrix(1, 100_000, lambda n: float(n).hex()),
    }
    print("| shape | body MiB | convert s | encode s |")
    print("| --- | --- | --- | --- |")
    for name, body in shapes.items():
        convert, encode = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            response = read_result(body)
            converted = time.perf_counter()
            encode_json({"A": response})
            convert.append(converted - started)
            encode.append(time.perf_counter() - converted)
        assert response.error is None, response.error
        print(f"| {name} | {len(body) / 2**20:.1f} | {statistics.median(convert):.3f} | "
              f"{statistics.median(encode):.3f} |")


if __name__ == "__main__":
    main()
