"""The CLI's commands, one module per area; ``cli.py`` registers them with Typer."""
