"""Metrics, harness, report and CLI: everything downstream of a backend's Fit."""
