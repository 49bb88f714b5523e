"""A run read back, and put to work: models for inference in every format, export and its check, predict."""
