"""Reporting: published numbers, seed aggregation, significance tests, tables, figures and the report."""
