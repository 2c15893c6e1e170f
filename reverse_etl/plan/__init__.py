"""Diff against state into a Plan (create/update/delete/unchanged/error per key)."""

from __future__ import annotations

from reverse_etl.plan.model import Plan, PlanCounts, RowError

__all__ = ["Plan", "PlanCounts", "RowError"]
