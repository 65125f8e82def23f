"""This release's name, as the package metadata has it (the wheel, `make install`)."""

from importlib.metadata import PackageNotFoundError, version

try:
    RELEASE = version("novi-mailman")
except PackageNotFoundError:  # running from a source tree that was never installed
    RELEASE = "dev"
