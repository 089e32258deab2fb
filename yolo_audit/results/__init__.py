"""Results: the schema of every table, where results live (locations), file keys, atomic writes, lazy reads and
rankings, and the errors table. Nothing here computes statistics."""
