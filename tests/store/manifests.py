"""The smallest manifest a model directory may have (`store/manifest.py`), for tests of the
directory mechanics rather than of a model."""


def model_manifest(**extra) -> dict:
    return {"created": 0.0, "model_version": 1, "config": {}, "schema": {}, "tables": {},
            **extra}
