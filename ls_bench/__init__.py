"""ls-bench: an experiment runner for label-smoothing and calibration studies."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ls-bench")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
