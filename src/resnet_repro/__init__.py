"""resnet-repro: a reproducible pipeline for He et al. (2015), "Deep Residual Learning for Image Recognition"."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-repro")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
