"""retl: declarative Reverse ETL. Sync warehouse rows into databases, files and APIs."""

from __future__ import annotations

__version__ = "0.1.0"
