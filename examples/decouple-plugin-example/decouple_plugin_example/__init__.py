"""An example Decouple Lab plugin (``docs/plugins.md``): one task, one packed rule, one torch.optim fallback."""
