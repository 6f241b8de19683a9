"""HyperCT Agent: a DICOM node that screens non-contrast chest CT with HyperCT."""

__version__ = "0.1.0"
