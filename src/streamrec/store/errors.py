"""The one error every reader of the on-disk format raises."""


class CorruptModelError(Exception):
    """A model, checkpoint or delta directory is missing, truncated, or fails its checksums."""
