"""Does the compiled module compute what the model does: tolerances, samples and the task metric gate."""
