"""What a checkpoint is: safe loading and content ids (checkpoint), what each key means (keys), the model family's
profile (profile), rebuilding a runnable module (build), forward hooks (hooks) and freezing (freeze)."""
