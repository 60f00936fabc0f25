"""Medical image file I/O: 2D images (PNG/JPEG/BMP/TIFF/DICOM) and 3D volumes (NIfTI/DICOM/npy).

``image2d`` (2D images), ``volume3d`` (volumes) and ``dicom`` (every DICOM read, used by both).
Not copied into checkpoints; the deterministic 3D preprocessing lives in
``medvl.models.volume_processing_medvl.MedVLVolumeProcessor`` and the intensity window presets in
``medvl.models.windows``.
"""

from medvl.imaging.image2d import load_image
from medvl.imaging.volume3d import Volume, load_volume

__all__ = ["Volume", "load_image", "load_volume"]
