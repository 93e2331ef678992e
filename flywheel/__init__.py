"""Flywheel: a Ray-native data flywheel for LLM applications."""

__version__ = "0.1.0"
