"""Data: preparing im2txt-format records and reading them back for training."""
