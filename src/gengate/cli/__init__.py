"""The `gengate` command: thin commands over library functions, one module per group."""
