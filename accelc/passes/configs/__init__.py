"""The pydantic config of every pass, importable without torch: the recipe schema is built from
these (accelc validate / accelc schema run where torch is absent). The implementations that
rewrite graphs live one level up and are found by kind through accelc.passes.registry."""
