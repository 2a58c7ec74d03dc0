"""Compiler backends. Only TVM for now."""
