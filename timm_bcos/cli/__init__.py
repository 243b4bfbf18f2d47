"""The `python -m timm_bcos` commands (demo, explain) and what every command line shares
(`common`: model names, weights files, devices)."""
