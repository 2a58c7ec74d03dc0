"""fx -> torch.export -> Relax: importer repairs, quantized-op lowering, build and export."""
