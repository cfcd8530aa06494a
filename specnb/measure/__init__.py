"""Measurement: timers that synchronize the accelerator, the timing lock, the clock audit, intervals,
the per-generation record, and the provenance of a result."""
