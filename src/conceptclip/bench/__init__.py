"""Protocol runner: few-shot (K shots x seeds) and base-to-novel tables over many methods."""

from conceptclip.bench.protocol import PROTOCOLS, BenchSettings, run_protocol
from conceptclip.bench.table import write_tables

__all__ = ["PROTOCOLS", "BenchSettings", "run_protocol", "write_tables"]
