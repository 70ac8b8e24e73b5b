"""The capacity planner: measured costs projected onto an operator's volume."""
