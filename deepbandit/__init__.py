"""deepbandit: GPU-accelerated deep contextual bandits for artwork personalisation."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepbandit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
