"""runner: a declarative workflow runner that survives flaky networks and crashes."""

__version__ = "0.1.0"
