"""Ray lives here and nowhere else: sessions (session), remote tasks with bounded in-flight work, retries, progress and
tree merges (tasks), and what a task runs on (devices: torch device, threads)."""
