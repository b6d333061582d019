"""Reporting rows: tables, figures, findings, the glossary, comparisons of runs."""
