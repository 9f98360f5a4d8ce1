"""nerfstudio plugin: NeRF fields and methods trained with curvature-aware optimizers.

Kept import-light on purpose: `python -m nerfstudio_plugin.scene` (numpy + Pillow) must work without nerfstudio, and
nerfstudio discovers the heavier modules (`dataparsers`, methods) through entry points only when it is installed.
"""
