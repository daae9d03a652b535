"""gliomaseg: lower-grade glioma segmentation in brain MRI with a U-Net on a CPU."""

__version__ = "0.1.0"

from .data import Patient, read_patient  # noqa: E402

__all__ = ["Patient", "Prediction", "Segmenter", "load_model", "read_patient", "__version__"]

_LAZY = {"load_model", "Segmenter", "Prediction"}  # from .inference, which imports torch


def __getattr__(name: str):
    # Lazy so that `import gliomaseg` (and every CLI start) does not pay for importing torch.
    if name in _LAZY:
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'gliomaseg' has no attribute {name!r}")
