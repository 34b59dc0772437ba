from tests.lightning_modules.conftest import cv_run, detector_ckpt  # noqa: F401  (shared fixtures)
