"""One module per dashboard page group; each exposes async handlers taking a `Ctx`."""
