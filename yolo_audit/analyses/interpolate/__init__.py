"""The interpolation analysis: schema.py (its table), job.py (one point on the line), plan.py (the driver)."""
