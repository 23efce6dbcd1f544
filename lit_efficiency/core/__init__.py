"""Shared core of both systems: errors, data/weight paths, timing, loggers, recorders. Imports neither system."""
