"""The fault campaign: real processes, real faults, figures in docs/reliability.md (`python -m faults`)."""
