"""Halts: approval requests the owner answers exactly once, through any channel."""

from .store import Halt, HaltError, HaltStore

__all__ = ["Halt", "HaltError", "HaltStore"]
