"""gliomaseg: lower-grade glioma segmentation in brain MRI with a U-Net on a CPU."""

__version__ = "0.1.0"

from .data import Patient, read_patient  # noqa: E402

__all__ = ["Patient", "read_patient", "__version__"]
