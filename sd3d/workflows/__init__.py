"""Multi-stage workflows that chain generation and reconstruction (the only sd3d code importing recon)."""
