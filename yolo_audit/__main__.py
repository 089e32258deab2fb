"""`python -m yolo_audit`: the same program as `yolo-audit`."""

from yolo_audit.cli import main

main()
