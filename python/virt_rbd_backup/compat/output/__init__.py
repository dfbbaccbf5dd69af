"""The original tool's ``output`` package: its backup targets (``output.restic``)."""

from . import restic

__all__ = ["restic"]
