"""The foundation every layer stands on: cameras, image and views-folder I/O, errors, progress, device.

This is the only part of ``sd3d`` that ``recon`` imports. It knows nothing of diffusion models.
"""
