"""The artifact on disk: files and hashes written atomically, the build cache, signatures."""
