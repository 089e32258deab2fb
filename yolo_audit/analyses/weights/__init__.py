"""The weights analysis: schema.py (tables), job.py (one task), plan.py (the driver)."""
