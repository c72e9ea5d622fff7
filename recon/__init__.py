"""Reconstruction: 16 views -> NeuS with a hash grid -> marching cubes -> textured mesh.

Never imports the diffusion models (dependencies point one way: cli -> sd3d.pipelines.syncdreamer -> recon).
"""
