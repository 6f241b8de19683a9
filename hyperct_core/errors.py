"""Errors of the model library; the agent's CLI prints them as one line."""


class HyperCTError(Exception):
    """Base class for every error hyperct_core raises on bad input."""


class PreprocessError(HyperCTError):
    """A series or volume that cannot become model input."""


class CheckpointError(HyperCTError):
    """A checkpoint that is missing, truncated, foreign or mismatched."""


class DependencyError(HyperCTError):
    """An installed library at a release this code was not written for."""
