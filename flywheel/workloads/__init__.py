"""Sample workloads: realistic generated logs for tests, benchmarks and the demo."""

from flywheel.workloads import support_tools

WORKLOADS = {"support-tools": support_tools.generate}
