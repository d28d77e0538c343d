"""Run reports (`harmonica report`) and run comparison (`harmonica compare`) over the tracking store,
read through harmonica.tracking.read."""

from harmonica.reports.common import ReportError
from harmonica.reports.compare import CompareResult, compare_runs, format_table
from harmonica.reports.report import SECTIONS, ReportPaths, build_report

__all__ = ["SECTIONS", "CompareResult", "ReportError", "ReportPaths", "build_report", "compare_runs", "format_table"]
