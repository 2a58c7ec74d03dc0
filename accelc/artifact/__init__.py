"""The artifact on disk: its typed manifest (manifest.py), files and hashes written atomically
(store.py), the build cache and signatures."""
