"""Shared by the benchmarks: run a comparison under glibc's default allocator and under the tuned settings.

glibc's default allocator can make large CPU workloads spend much of their time in page faults, and the settings are
read at process start, so each setting gets its own child process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

TUNED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allocator",
        choices=["both", "current"],
        default="both",
        help="'both': run in two child processes, default and tuned glibc allocator; 'current': this process as is",
    )


def allocator_label() -> str:
    """How this process's allocator is set, for the table header."""
    if all(os.environ.get(key) == value for key, value in TUNED_ALLOCATOR.items()):
        return "tuned (" + " ".join(f"{k}={v}" for k, v in TUNED_ALLOCATOR.items()) + ")"
    return "glibc default"


def rerun_under_both_allocators() -> None:
    """Run this script again with ``--allocator current``, first with the default then with the tuned settings."""
    child = [sys.executable, sys.argv[0], *sys.argv[1:], "--allocator", "current"]
    default_env = {k: v for k, v in os.environ.items() if k not in TUNED_ALLOCATOR}
    subprocess.run(child, env=default_env, check=True)
    subprocess.run(child, env={**default_env, **TUNED_ALLOCATOR}, check=True)
