"""Offline data preparation: genome FASTA (+ BED splits) -> WebDataset shards + manifest (DESIGN §3).

Readers outside this package go through :mod:`data_prep.format`. This package imports nothing of the
project above it (it has its own DNA byte tables in :mod:`data_prep.dna`).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("longdna")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"
