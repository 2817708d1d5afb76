"""The run's one report page: it renders what the stages wrote, and computes nothing itself."""

from covid_cxr.report.build import NOTICE, SECTIONS, build_report, read_run, render, report_context

__all__ = ["NOTICE", "SECTIONS", "build_report", "read_run", "render", "report_context"]
