"""Pure statistics in torch: no Ray, no pyarrow, no file IO."""
