"""Model builders: tiny random test models (tiny, tiny_models), GGUF conversion, Neuron ahead-of-time compile."""
