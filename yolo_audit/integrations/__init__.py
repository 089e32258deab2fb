"""Integrations with the tools users train with: each in its own module (`ultralytics`: callbacks for `YOLO.train`)."""
