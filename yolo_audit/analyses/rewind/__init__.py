"""The rewind analysis: schema.py (its table), job.py (one validation), plan.py (the driver)."""
