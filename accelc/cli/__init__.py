"""The `accelc` command: parse arguments, call the library, print."""
