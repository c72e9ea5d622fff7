"""Reconstruction: 16 views -> NeuS with a hash grid -> marching cubes -> textured mesh.

Never imports the diffusion models: from sd3d it imports only :mod:`sd3d.core` (the layers are in
docs/architecture.md; ``make lint`` checks them).
"""
