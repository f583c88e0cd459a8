"""fazt-agent: the autonomous operator of a personal cloud server."""

__version__ = "0.1.0"
