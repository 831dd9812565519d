"""Loading a model behind one record (`LoadedModel`), on either TransformerLens backend."""
