"""Medical image file I/O: 2D images (PNG/JPEG/BMP/TIFF/DICOM) and 3D volumes (NIfTI/DICOM series/npy).

Not copied into checkpoints; the deterministic 3D preprocessing lives in
``medvl.models.volume_processing_medvl.MedVLVolumeProcessor``.
"""

from medvl.imaging.image2d import load_image
from medvl.imaging.volume3d import Volume, load_volume
from medvl.imaging.windows import HU_WINDOWS, apply_window_uint8, resolve_window, window_bounds

__all__ = ["HU_WINDOWS", "Volume", "apply_window_uint8", "load_image", "load_volume", "resolve_window", "window_bounds"]
