"""Kept only because skinjax/training/config_checks.py still imports these two names.

Every weight format now goes through skinjax.weights.pretrained; once config_checks calls
`pretrained.check_init(arch, init)` itself, this module goes.
"""

from skinjax.weights.pretrained import check_init  # noqa: F401


def is_lite(arch: str) -> bool:
  return arch.startswith('efficientnet_lite')
