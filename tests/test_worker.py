"""Process-level setup of a serving worker (gateway.__main__)."""

from __future__ import annotations

import subprocess
import sys

# Fill and free eight 400 KiB chunks 64 times and print the minor page faults that took. With glibc's
# sliding thresholds the freed heap top is trimmed every round, so each round faults its pages in again,
# as every streamed chunk in the proxy did.
_CHURN = """
import resource, sys
from gateway.__main__ import _retain_freed_memory
if sys.argv[1] == "tuned":
    _retain_freed_memory()
block = b"x" * (1 << 20)  # an earlier large body raises glibc's sliding thresholds
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(64):
    chunks = [b"x" * (400 << 10) for _ in range(8)]  # chunks of a few streams in flight
    del chunks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, timeout=60,
                            check=True)
    return int(result.stdout)


def test_freed_body_memory_is_reused_not_faulted_in_again():
    default, tuned = _faults("default"), _faults("tuned")
    pages = 8 * (400 << 10) // 4096  # one round's chunks
    assert default > 16 * pages, (default, tuned)  # glibc's defaults: fresh pages round after round
    assert tuned < 2 * pages, (default, tuned)  # fixed thresholds: the first round's pages are reused
