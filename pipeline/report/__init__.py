"""Reporting: run directories, metrics, plots, inspect, terminal progress."""
